"""``python -m tfresnet.explain``: Grad-CAM heat maps -- where the model looked.

Grad-CAM (Selvaraju et al., arXiv 1610.02391): the gradient of a class's logit with respect
to the last convolutional feature map, averaged over its positions, weights that map's
channels; the positive part of the weighted sum, upsampled to the image, is the heat map.
Every registry model and pretrained backbone exposes that map (`feature_map` / `head`).

Example:
    python -m tfresnet.explain saved_models/my-run photo.jpg --out cams/
    python -m tfresnet.explain best.keras photos/ --out cams/ --class cat
"""


import sys

from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.evaluation.gradcam import explain


def main(argv=None):
    parser = command_parser("tfresnet.explain", __doc__)
    parser.add_argument("model", help="run folder (with best.keras) or a .keras file")
    parser.add_argument("images", help="an image file or a folder of images")
    parser.add_argument("--out", default="cams", help="folder for the overlay PNGs")
    parser.add_argument("--class", dest="class_name",
                        help="explain this class (name or index) instead of the predicted one")
    parser.add_argument("--size", type=int, default=224, help="side of each drawn image, px")
    args = parser.parse_args(argv)
    if not 16 <= args.size <= 2048:
        raise UserError(f"--size must be between 16 and 2048. Received: {args.size}")
    explain(args.model, args.images, args.out, args.class_name, args.size)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.explain", main))



if __name__ == "__main__":
    cli()
