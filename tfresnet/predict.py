"""``python -m tfresnet.predict``: class probabilities for image files.

Any image OpenCV reads is resized to the model's input; the model normalises it itself and
names the classes, so nothing is re-guessed. Prints a table and writes JSON.

Example:
    python -m tfresnet.predict saved_models/my-run flower.jpg --top-k 5
    python -m tfresnet.predict best.keras photos/ --json photos.json
"""

import json
import sys
from pathlib import Path

import numpy as np

from tfresnet.checkpoint import atomic_write_text, load_model
from tfresnet.data.folders import read_image
from tfresnet.errors import UserError, command_parser, run_cli
from tfresnet.inference import predict_probabilities


def image_files(path):
    """The image file, or the files of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"folder {path} has no files to predict")
        return files
    if not path.exists():
        raise UserError(f"no such image file or folder: {path}")
    return [path]


def predict(model_path, target, top_k=5):
    """Top-k predictions per readable image; unreadable files in a folder are reported
    by name and skipped, an unreadable single file is an error."""
    model = load_model(model_path)
    files = image_files(target)
    images, kept = [], []
    for path in files:
        try:
            images.append(read_image(path, model.image_size))
            kept.append(path)
        except UserError as err:
            if len(files) == 1:
                raise
            print(f"warning: {err} (skipped)", file=sys.stderr)
    if not images:
        raise UserError(f"none of the files in {target} is an image OpenCV can read")
    probabilities = predict_probabilities(model, np.stack(images))
    k = min(top_k, probabilities.shape[1])
    results = []
    for path, row in zip(kept, probabilities):
        best = np.argsort(-row, kind="stable")[:k]
        results.append({"file": str(path), "top": [
            {"class": model.class_names[i], "index": int(i), "probability": float(row[i])}
            for i in best]})
    return results


def main(argv=None):
    parser = command_parser("tfresnet.predict", __doc__)
    parser.add_argument("model", help="run folder (with best.keras) or a .keras file")
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
