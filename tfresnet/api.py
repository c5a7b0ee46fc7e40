"""The Python API: what the commands do, from a notebook or a script.

See README, "From Python"; ``tfresnet.load_model`` is `tfresnet.runs.run_folder.load_model`.
Like the commands, it calls the library; it never goes through a command module.
"""

import dataclasses
from pathlib import Path

import numpy as np

from tfresnet.config import TrainConfig
from tfresnet.data.images import read_image
from tfresnet.errors import UserError
from tfresnet.evaluation.pictures import draw_run
from tfresnet.evaluation.predictions import read_images, top_classes
from tfresnet.runs.probabilities import predict_probabilities
from tfresnet.training.run import train


@dataclasses.dataclass
class Run:
    """A finished training run: its folder and its ``summary.json`` as a dict."""

    folder: Path
    summary: dict


def fit(config=None, *, fresh=False, **settings):
    """Trains (or resumes) a run, as ``python -m tfresnet.train`` does, and returns it.

    Args:
        config: a `TrainConfig` to start from (default: the recommended recipe).
        fresh: start the run over instead of resuming it.
        **settings: any `TrainConfig` field, e.g. ``dataset="cifar10", epochs=30``; paths
            may be `Path`s (``weights=run.folder, transfer="finetune"`` fine-tunes the
            network of an earlier run).

    Returns:
        A `Run` (on a worker other than the chief of a cluster: its summary is empty).
    """
    settings = {name: str(value) if isinstance(value, Path) else value
                for name, value in settings.items()}
    config = (config or TrainConfig()).updated(settings, "fit()")
    summary = train(config, fresh=fresh)
    return Run(Path(summary.get("run", config.output_dir)), summary)


def classify(model, images, top_k=5):
    """The ``top_k`` classes of each image, most probable first.

    Args:
        model: a model from `load_model`.
        images: uint8 RGB images, one array ``(N, H, W, 3)``, or image file paths (a
            list, or one path or folder); either is shown to the model as in its
            evaluation (resized, or for a model trained on photos centre-cropped).

    Returns:
        One dict per image: ``{"top": [{"class", "index", "probability"}, ...]}``, with
        ``"file"`` for files.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"images must be uint8 (N, H, W, 3) RGB. Received: "
                            f"{images.dtype} {images.shape}")
        if images.shape[1:3] != tuple(model.image_size) or model.view.kind == "photo":
            images = np.stack([model.view.evaluate(image) for image in images])
        files = None
    else:
        paths = [images] if isinstance(images, (str, Path)) else list(images)
        if len(paths) == 1 and Path(paths[0]).is_dir():
            images, files = read_images(paths[0], model.view)
        else:
            files = paths
            images = np.stack([read_image(p, model.view) for p in paths])
    rows = top_classes(predict_probabilities(model, images), model.class_names, top_k)
    for row, path in zip(rows, files or []):
        row["file"] = str(path)
    return rows


def draw(target, cam=False, **options):
    """Draws ``test_visualisation.png`` (``cam=True``: with Grad-CAM overlays) for a run
    folder or model file, as ``python -m tfresnet.visualize`` does; returns its path.
    ``options``: those of `tfresnet.evaluation.pictures.draw_run` (dataset, per_row, scale, ...)."""
    return draw_run(target, cam=cam, **options)
