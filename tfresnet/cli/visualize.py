"""``python -m tfresnet.visualize``: the test images in rows by predicted class (OpenCV).

One row per class (all of them, empty rows too), the class name at the left, the row's
images ordered by confidence, each framed green (correct) or red (wrong), and a header
with the model, data set and test accuracy -- the seed's ``test_visualisation.png``.

Example:
    python -m tfresnet.visualize saved_models/resnet18-cifar100-20261123-101500
    python -m tfresnet.visualize best.keras --dataset cifar10 --per-row 30 --scale 3
    python -m tfresnet.visualize saved_models/my-run --cam   # where the model looked
"""



import sys

from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.evaluation.inference import add_run_arguments
from tfresnet.evaluation.pictures import draw_run


def main(argv=None):
    parser = command_parser("tfresnet.visualize", __doc__)
    add_run_arguments(parser)
    parser.add_argument("--out", help="output PNG (default: test_visualisation.png beside "
                                      "the model)")
    parser.add_argument("--per-row", type=int, help="images per row (default: fit 4000 px)")
    parser.add_argument("--scale", type=int, default=2, help="upscaling of each image")
    parser.add_argument("--select", choices=["spread", "top"], default="spread",
                        help="which images a full row shows: spread over the confidence "
                             "range, or the most confident")
    parser.add_argument("--cam", action="store_true",
                        help="lay each image's Grad-CAM heat map over it (writes "
                             "test_visualisation_cam.png)")
    args = parser.parse_args(argv)
    if args.per_row is not None and args.per_row <= 0:
        raise UserError(f"--per-row must be positive. Received: {args.per_row}")
    if args.scale <= 0 or args.scale > 16:
        raise UserError(f"--scale must be between 1 and 16. Received: {args.scale}")
    draw_run(args.target, args.dataset, args.data_dir, args.out, args.per_row, args.scale,
             args.select, args.cam)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.visualize", main))



if __name__ == "__main__":
    cli()
