"""Predictions for image files by a Keras model or one of its exports."""


import sys
from pathlib import Path

import numpy as np

from tfresnet.data.images import find_images, read_image
from tfresnet.errors import UserError
from tfresnet.export.exporter import ExportedModel
from tfresnet.export.formats import format_of
from tfresnet.runs.probabilities import predict_probabilities
from tfresnet.runs.run_folder import load_model


def image_files(path):
    """The image file, or the image files of a folder and its sub-folders (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = find_images(path)
        if not files:
            raise UserError(f"folder {path} has no image files to predict, in it or in its "
                            "sub-folders")
        return files
    if not path.exists():
        raise UserError(f"no such image file or folder: {path}")
    return [path]


def read_images(target, view):
    """The readable images of a file or folder as ``(uint8 array, their paths)``, as a
    model sees them through its `View` (`read_image`); unreadable files in a folder
    are reported by name and skipped, an unreadable single file is an error."""
    files = image_files(target)
    images, kept = [], []
    for path in files:
        try:
            images.append(read_image(path, view))
            kept.append(path)
        except UserError as err:
            if len(files) == 1:
                raise
            print(f"warning: {err} (skipped)", file=sys.stderr)
    if not images:
        raise UserError(f"none of the files in {target} is an image OpenCV can read")
    return np.stack(images), kept


def shown_path(path, target):
    """How outputs name an image file of ``target``: relative to it when it is a folder,
    else by its name."""
    path = Path(path)
    return path.relative_to(target) if Path(target).is_dir() else Path(path.name)


def predict(model_path, target, top_k=5):
    """Top-k predictions per readable image of a file or folder (sub-folders included), by
    a run's Keras model or by one of its exports (run by its own runtime); each row's
    ``file`` is `shown_path`."""
    if format_of(model_path):
        model = ExportedModel(model_path)
        images, kept = read_images(target, model.view)
        probabilities = model.probabilities(images)
    else:
        model = load_model(model_path)
        images, kept = read_images(target, model.view)
        probabilities = predict_probabilities(model, images)
    return [{"file": str(shown_path(path, target)), **row}
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

