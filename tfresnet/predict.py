"""``python -m tfresnet.predict``: class probabilities for image files.

Any image OpenCV reads becomes the model's input as in evaluation (resized, or for a model
trained on photos centre-cropped); the model normalises it itself and names the classes, so
nothing is re-guessed. Prints a table and writes JSON. The model may
also be an export of `tfresnet.export` (a phone's .tflite, an .onnx, a SavedModel), run by
its own runtime, to check it on your own images.

Example:
    python -m tfresnet.predict saved_models/my-run flower.jpg --top-k 5
    python -m tfresnet.predict best.keras photos/ --json photos.json
    python -m tfresnet.predict saved_models/my-run/export/model_int8.tflite photos/
"""

import json
import sys
from pathlib import Path

import numpy as np

from tfresnet.checkpoint import atomic_write_text, load_model
from tfresnet.data.folders import is_image_file, read_image
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.inference import predict_probabilities


def image_files(path):
    """The image file, or the image files of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise UserError(f"folder {path} has no image files to predict")
        return files
    if not path.exists():
        raise UserError(f"no such image file or folder: {path}")
    return [path]


def read_images(target, image_size, eval_crop=None):
    """The readable images of a file or folder as ``(uint8 array, their paths)``, as a
    model of input ``image_size`` sees them (`read_image`); unreadable files in a folder
    are reported by name and skipped, an unreadable single file is an error."""
    files = image_files(target)
    images, kept = [], []
    for path in files:
        try:
            images.append(read_image(path, image_size, eval_crop))
            kept.append(path)
        except UserError as err:
            if len(files) == 1:
                raise
            print(f"warning: {err} (skipped)", file=sys.stderr)
    if not images:
        raise UserError(f"none of the files in {target} is an image OpenCV can read")
    return np.stack(images), kept


def is_export(path):
    """True for what `tfresnet.export` writes: .tflite, .onnx or a SavedModel folder."""
    path = Path(path)
    return path.suffix in (".tflite", ".onnx") or (path / "saved_model.pb").is_file()


def predict(model_path, target, top_k=5):
    """Top-k predictions per readable image of a file or folder, by a run's Keras model
    or by one of its exports (run by its own runtime)."""
    if is_export(model_path):
        from tfresnet.export import ExportedModel

        model = ExportedModel(model_path)
        images, kept = read_images(target, model.image_size, model.eval_crop)
        probabilities = model.probabilities(images)
    else:
        model = load_model(model_path)
        images, kept = read_images(target, model.image_size, model.eval_crop)
        probabilities = predict_probabilities(model, images)
    return [{"file": str(path), **row}
            for path, row in zip(kept, top_classes(probabilities, model.class_names, top_k))]


def top_classes(probabilities, class_names, top_k):
    """Per row of ``probabilities``: ``{"top": [{"class", "index", "probability"}, ...]}``,
    the ``top_k`` most probable classes first."""
    k = min(top_k, probabilities.shape[1])
    rows = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        rows.append({"top": [{"class": class_names[i], "index": int(i),
                              "probability": float(row[i])} for i in best]})
    return rows


def main(argv=None):
    parser = command_parser("tfresnet.predict", __doc__)
    parser.add_argument("model", help="run folder (with best.keras), a .keras file, or an "
                                      "export (.tflite, .onnx, SavedModel folder)")
    parser.add_argument("images", help="an image file or a folder of images")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", default="predictions.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    if args.top_k <= 0:
        raise UserError(f"--top-k must be positive. Received: {args.top_k}")
    results = predict(args.model, args.images, args.top_k)
    width = max(len(Path(r["file"]).name) for r in results)
    for result in results:
        ranked = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{Path(result['file']).name:<{width}}  {ranked}")
    atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def cli():
    sys.exit(run_cli("tfresnet.predict", main))


if __name__ == "__main__":
    cli()
