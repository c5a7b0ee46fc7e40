"""``python -m tfresnet.train``: train a model and leave a complete, resumable run folder.

Example:
    python -m tfresnet.train --epochs 150                       # ResNet18, CIFAR-100
    python -m tfresnet.train --config experiments/seed_v5.json  # the seed's recipe
    python -m tfresnet.train --dataset digits --epochs 5 --name demo
"""



import sys

from tfresnet.config import add_config_arguments, resolve_config
from tfresnet.errors import command_parser, run_cli
from tfresnet.training.run import train


def build_parser():
    parser = command_parser("tfresnet.train", __doc__)
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (see experiments/)")
    parser.add_argument("--hparams", metavar="FILE", help="best_hparams.json from tfresnet.tune")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run over instead of resuming it")
    add_config_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    train(resolve_config(args), fresh=args.fresh)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.train", main))



if __name__ == "__main__":
    cli()
