"""``python -m tfresnet.baselines``: the comparison points of seed 001.

  knn     k-nearest neighbours (L1 and L2) on raw pixels or, with ``--features RUN``, on a
          trained network's penultimate features; k and the distance are chosen on the
          validation split, then scored once on test.
  linear  a softmax (logistic-regression) classifier on the same inputs, its regularisation
          chosen on validation.
  cnn     seed 001's small CNN, trained through ``tfresnet.train`` (all its flags apply).

Each writes ``saved_models/<name>/summary.json`` with the fields a training run writes, so
``python -m tfresnet.compare`` can put them side by side.

Example:
    python -m tfresnet.baselines knn --dataset cifar10
    python -m tfresnet.baselines knn --dataset cifar10 --features saved_models/my-run
    python -m tfresnet.baselines cnn --dataset cifar10 --epochs 10
"""



import sys

from tfresnet.errors import ArgumentParser, command_parser, run_cli
from tfresnet.evaluation.baselines import classical_baseline


def build_parser():
    parser = command_parser("tfresnet.baselines", __doc__)
    parser.add_argument("method", choices=["knn", "linear", "cnn"])
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    method = build_parser().parse_args(argv[:1]).method
    if method == "cnn":
        from tfresnet.cli.train import main as train_main

        return train_main(["--model", "small_cnn", *argv[1:]])
    parser = ArgumentParser(prog=f"python -m tfresnet.baselines {method}")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument("--val-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", metavar="RUN", help="use a trained run's features")
    parser.add_argument("--train-subset", type=int, help="use only the first N training images")
    parser.add_argument("--output-dir", default="saved_models")
    parser.add_argument("--name")
    classical_baseline(method, **vars(parser.parse_args(argv[1:])))
    return 0


def cli():
    sys.exit(run_cli("tfresnet.baselines", main))



if __name__ == "__main__":
    cli()
