"""``python -m tfresnet.predict``: class probabilities for image files.

Any image OpenCV reads becomes the model's input as in evaluation (resized, or for a model
trained on photos centre-cropped); the model normalises it itself and names the classes, so
nothing is re-guessed. A folder is read with its sub-folders (a folder of class folders
too), its images named relative to it. Prints a table and writes JSON. The model may
also be an export of `tfresnet.export` (a phone's .tflite, an .onnx, a SavedModel), run by
its own runtime, to check it on your own images.

Example:
    python -m tfresnet.predict saved_models/my-run flower.jpg --top-k 5
    python -m tfresnet.predict best.keras photos/ --json photos.json
    python -m tfresnet.predict saved_models/my-run/export/model_int8.tflite photos/
"""


import json
import sys

from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.evaluation.predictions import predict
from tfresnet.runs.files import atomic_write_text


def main(argv=None):
    parser = command_parser("tfresnet.predict", __doc__)
    parser.add_argument("model", help="run folder (with best.keras), a .keras file, or an "
                                      "export (.tflite, .onnx, SavedModel folder)")
    parser.add_argument("images", help="an image file or a folder of images (sub-folders "
                                       "included)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", default="predictions.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    if args.top_k <= 0:
        raise UserError(f"--top-k must be positive. Received: {args.top_k}")
    results = predict(args.model, args.images, args.top_k)
    width = max(len(r["file"]) for r in results)
    for result in results:
        ranked = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{result['file']:<{width}}  {ranked}")
    atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def cli():
    sys.exit(run_cli("tfresnet.predict", main))



if __name__ == "__main__":
    cli()
