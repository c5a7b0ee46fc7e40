"""``python -m tfresnet.tune``: search the learning rate (and more), resumably.

Two methods:
  keras-tuner (default): random, Bayesian or Hyperband search over the learning rate
      (log-uniform) and, with ``--search``, optimizer, l2, weight_decay, label_smoothing,
      batch_size and augment. Every trial trains as ``tfresnet.train`` would with its
      values: the same precision, seed, model, loss, optimizer and pipeline; the objective
      is validation accuracy, never test. ``trial_stats/<trial>.json`` holds each trial's
      seconds, compile seconds, dtype policy and per-epoch figures. Re-running the same
      command continues the search; ``--fresh`` starts over.
  lr-range: one short run with the learning rate growing exponentially per step; the
      suggested rate is where the smoothed loss falls fastest, before it diverges.

Both write ``best_hparams.json``, which ``tfresnet.train --hparams`` consumes.

Parallel trials run on keras-tuner's own distributed mode: one chief (the oracle, which
alone writes the results) and workers that each run one trial at a time, set up only
through keras-tuner's variables KERASTUNER_TUNER_ID (``chief``, ``tuner0``, ...),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT. ``--parallel N`` starts a chief and N
workers on this machine, one GPU each.

Example:
    python -m tfresnet.tune --max-trials 10 --epochs-per-trial 3 --subset 0.2
    python -m tfresnet.tune --method lr-range --dataset cifar10
    python -m tfresnet.tune --max-trials 20 --parallel 4      # 4 GPUs, 4 trials at a time
    python -m tfresnet.train --hparams saved_models/tune/<name>/best_hparams.json
"""




import dataclasses
import sys

from tfresnet.config import add_config_arguments, resolve_config
from tfresnet.errors import command_parser, run_cli
from tfresnet.tuning.launch import run_in_parallel, tuner_role
from tfresnet.tuning.memory import limit_heap_arenas
from tfresnet.tuning.run import METHODS, Search, tune
from tfresnet.tuning.search import SEARCH_SPACE, TUNERS


def build_parser():
    parser = command_parser("tfresnet.tune", __doc__)
    search = parser.add_argument_group("search")
    search.add_argument("--method", choices=METHODS, default=Search.method)
    search.add_argument("--tuner", choices=TUNERS, default=Search.tuner)
    search.add_argument("--search", nargs="*", default=[], metavar="NAME",
                        help=f"also search these: {', '.join(SEARCH_SPACE)}")
    search.add_argument("--lr-min", type=float, default=Search.lr_min)
    search.add_argument("--lr-max", type=float, default=Search.lr_max)
    search.add_argument("--max-trials", type=int, default=Search.max_trials)
    search.add_argument("--epochs-per-trial", type=int, default=Search.epochs_per_trial)
    search.add_argument("--range-steps", type=int, default=Search.range_steps,
                        help="steps of the LR range test")
    search.add_argument("--subset", type=float, default=Search.subset,
                        help="fraction of the training set to search on")
    search.add_argument("--fresh", action="store_true", help="restart the search")
    search.add_argument("--parallel", type=int, default=Search.parallel, metavar="N",
                        help="run N trials at a time: a chief and N workers on this machine, "
                             "one GPU each")
    parser.add_argument("--config", metavar="FILE", help="JSON file of base settings")
    add_config_arguments(parser)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(Search)}
    search = Search(**{**values, "search": tuple(args.search)})
    if args.parallel > 1 and not tuner_role():
        search.validate()
        return run_in_parallel(argv, args.parallel)
    limit_heap_arenas()
    args.hparams = None
    base = resolve_config(args).updated({"epochs": args.epochs_per_trial, "visualize": False,
                                         "tensorboard": False}, "tune")
    tune(search, base)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.tune", main))


if __name__ == "__main__":
    cli()
