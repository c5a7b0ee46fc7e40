"""``python -m tfresnet.tune``: search the learning rate (and more), resumably.

Two methods:
  keras-tuner (default): random, Bayesian or Hyperband search over the learning rate
      (log-uniform) and, with ``--search``, optimizer, l2, weight_decay, label_smoothing,
      batch_size and augment. Every trial trains through the same model, loss, optimizer
      and pipeline as ``tfresnet.train``; the objective is validation accuracy, never test.
      Re-running the same command continues the search; ``--fresh`` starts over.
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


import json
import os
import sys
from pathlib import Path

from tfresnet.assemble import load_data
from tfresnet.checkpoint import atomic_write_text, make_dir
from tfresnet.config import add_config_arguments, resolve_config
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.runtime import configure
from tfresnet.tuning.launch import run_in_parallel, tuner_role
from tfresnet.tuning.lr_range import lr_range_test
from tfresnet.tuning.memory import limit_heap_arenas
from tfresnet.tuning.results import write_search_results
from tfresnet.tuning.search import SEARCHABLE, TUNERS, ResNetHyperModel, make_tuner, subset


def check_arguments(args):
    low, high = args.lr_min, args.lr_max
    if not (0 < low < high):
        raise UserError(f"the learning-rate range must satisfy 0 < --lr-min < --lr-max. "
                        f"Received: {low} .. {high}")
    if args.max_trials <= 0 or args.epochs_per_trial <= 0 or args.range_steps < 10:
        raise UserError("--max-trials and --epochs-per-trial must be positive and "
                        "--range-steps at least 10")
    if args.parallel < 1:
        raise UserError(f"--parallel must be at least 1. Received: {args.parallel}")
    if (args.parallel > 1 or tuner_role()) and args.method != "keras-tuner":
        raise UserError("parallel tuning runs keras-tuner trials; the lr-range test is one "
                        "run: drop --parallel (and the KERASTUNER_* variables)")
    if not 0 < args.subset <= 1:
        raise UserError(f"--subset must be in (0, 1]. Received: {args.subset}")
    unknown = sorted(set(args.search) - set(SEARCHABLE))
    if unknown:
        raise UserError(f"unknown hyperparameter(s) {', '.join(unknown)}; searchable: lr "
                        f"(always) and {', '.join(SEARCHABLE)}")


def tune(args, base):
    """Runs the chosen method; returns the best hyper-parameters written (empty on a
    keras-tuner worker, which runs trials and writes only their own records)."""
    check_arguments(args)
    role = tuner_role()
    name = args.name or f"{base.model}-{Path(base.dataset).name}"
    out_dir = Path(base.output_dir) / "tune" / name
    space = {"method": args.method, "tuner": args.tuner, "search": sorted(args.search),
             "lr_range": [args.lr_min, args.lr_max], "base": base.to_dict(),
             "subset": args.subset, "epochs_per_trial": args.epochs_per_trial}
    space_path = out_dir / "search.json"
    if space_path.exists() and not (args.fresh and role != "worker"):
        saved = json.loads(space_path.read_text())
        if saved != space:
            changed = sorted(k for k in space if saved.get(k) != space[k])
            raise UserError(f"{out_dir} holds a search with another setup ({', '.join(changed)}"
                            "); use another --name, or --fresh to start over")
    runtime = configure(base)
    data = subset(load_data(base), args.subset, base.seed)
    if not len(data.x_val):
        raise UserError("tuning needs a validation split; drop --val-size 0")
    if role != "worker":
        make_dir(out_dir)  # only now: a refused search leaves nothing behind
        atomic_write_text(space_path, json.dumps(space, indent=2) + "\n")
    lr_range = (args.lr_min, args.lr_max)
    if args.method == "lr-range":
        suggestion = lr_range_test(base, data, runtime, lr_range, args.range_steps, out_dir)
        hparams = {"model": base.model, "lr": suggestion}
        atomic_write_text(out_dir / "best_hparams.json", json.dumps(hparams, indent=2) + "\n")
        print(f"suggested learning rate: {suggestion:.3g}")
    else:
        hypermodel = ResNetHyperModel(base, data, runtime, args.search, lr_range)
        tuner = make_tuner(args.tuner, hypermodel, out_dir, runtime, args.max_trials,
                           args.epochs_per_trial, args.seed,
                           overwrite=args.fresh and role != "worker")
        tuner.search()
        if role == "worker":
            print(f"{os.environ['KERASTUNER_TUNER_ID']}: the search is complete")
            return {}
        hparams, trials = write_search_results(tuner, out_dir, base, args.epochs_per_trial)
        print(f"{len(trials)} trials; best: {json.dumps(hparams)}")
    print(f"results: {out_dir}")
    return hparams


def build_parser():
    parser = command_parser("tfresnet.tune", __doc__)
    search = parser.add_argument_group("search")
    search.add_argument("--method", choices=["keras-tuner", "lr-range"], default="keras-tuner")
    search.add_argument("--tuner", choices=TUNERS, default="random")
    search.add_argument("--search", nargs="*", default=[], metavar="NAME",
                        help=f"also search these: {', '.join(SEARCHABLE)}")
    search.add_argument("--lr-min", type=float, default=1e-4)
    search.add_argument("--lr-max", type=float, default=1.0)
    search.add_argument("--max-trials", type=int, default=10)
    search.add_argument("--epochs-per-trial", type=int, default=3)
    search.add_argument("--range-steps", type=int, default=200,
                        help="steps of the LR range test")
    search.add_argument("--subset", type=float, default=1.0,
                        help="fraction of the training set to search on")
    search.add_argument("--fresh", action="store_true", help="restart the search")
    search.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run N trials at a time: a chief and N workers on this machine, "
                             "one GPU each")
    parser.add_argument("--config", metavar="FILE", help="JSON file of base settings")
    add_config_arguments(parser)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.parallel > 1 and not tuner_role():
        check_arguments(args)
        return run_in_parallel(argv, args.parallel)
    limit_heap_arenas()
    args.hparams = None
    base = resolve_config(args)
    args.seed, args.name = base.seed, base.name
    base = base.updated({"epochs": args.epochs_per_trial, "visualize": False,
                         "tensorboard": False}, "tune")
    tune(args, base)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.tune", main))



if __name__ == "__main__":
    cli()
