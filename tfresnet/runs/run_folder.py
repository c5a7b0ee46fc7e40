"""A run's folder (`RunFolder`), its model (`load_model`) and its data set (`load_run_data`).

Every command that reads or writes a run goes through it (README, "What a run leaves
behind"): which file holds what, whether a run may resume in it, what it recorded; the
model of a run folder or ``.keras`` file, and the data set the run recorded.
"""

import csv
import json
import time
import zipfile
from pathlib import Path

import keras

from tfresnet.compat import canonical
from tfresnet.config import TrainConfig
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.models import Classifier, Transfer
from tfresnet.runs.files import atomic_write_text

# Settings a resumed run may change; any other difference means a different run.
RESUMABLE_CHANGES = {"epochs", "tensorboard", "visualize", "name", "output_dir", "log_every",
                     "checkpoint_every"}


class RunFolder:
    """The folder of one training run (or of a baseline, which writes only its summary).

    Args:
        path: the folder.
    """

    BEST = "best.keras"  # the deployable model of the best epoch
    LAST = "last.keras"  # the last finished epoch, with optimizer state
    RESUME = "resume.keras"  # a state inside the next epoch (--checkpoint-every)
    RESUME_POINTS = (LAST, RESUME)
    CONFIG = "config.json"  # the run's TrainConfig
    CLASSES = "class_indices.json"  # class name -> logit index
    HISTORY = "history.csv"  # one row per finished epoch
    CURVES = "curves.png"  # the learning curves of history.csv
    SUMMARY = "summary.json"  # written once the run has finished

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name):
        return self.path / name

    def __str__(self):
        return str(self.path)

    def __fspath__(self):
        return str(self.path)

    @classmethod
    def of(cls, target):
        """The folder of ``target``: a run folder itself, or the folder holding a model
        file."""
        target = Path(target)
        return cls(target if target.is_dir() else target.parent)

    @classmethod
    def for_config(cls, config):
        """The folder of a run of ``config``: ``--name``, else the newest unfinished run
        of the same settings, else a new ``model-dataset-time`` folder."""
        output = Path(config.output_dir)
        if config.name:
            return cls(output / config.name)
        wanted = _comparable(canonical(config.to_dict()))
        candidates = sorted(output.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        for path in reversed(candidates):
            folder = cls(path.parent)
            if not folder.finished:
                try:
                    if _comparable(canonical(json.loads(path.read_text()))) == wanted:
                        return folder
                except ValueError:
                    continue
        dataset = Path(config.dataset).name or "data"
        return cls(output / f"{config.model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")

    # --- what it holds ---

    @property
    def name(self):
        return self.path.name

    @property
    def finished(self):
        """Whether the run ended: its ``summary.json`` exists."""
        return (self / self.SUMMARY).exists()

    @property
    def export_dir(self):
        """Where exports go by default, with their ``export.json``."""
        return self / "export"

    def config(self):
        """The settings the run was started with, as a dict ({} when unknown)."""
        return _read_json(self / self.CONFIG)

    def summary(self, required=False):
        """``summary.json`` as a dict; ``required``: a `UserError` when missing or bad,
        else {}."""
        return _read_json(self / self.SUMMARY, "give finished run folders" if required
                          else None)

    def history(self):
        """The rows of ``history.csv`` ([] when absent)."""
        return read_history(self / self.HISTORY)

    def exports(self):
        """The entries of ``export/export.json``, by file name."""
        return _read_json(self.export_dir / "export.json")

    def resume_points(self):
        """The resume files present, oldest kind first."""
        return [self / name for name in self.RESUME_POINTS if (self / name).exists()]

    # --- a training run's life ---

    def check(self, config, fresh):
        """Whether a run of ``config`` resumes here; refuses a folder of other settings or
        that is not a run. Writes nothing."""
        config_path = self / self.CONFIG
        if self.path.exists() and any(self.path.iterdir()) and not fresh:
            if not config_path.exists():
                raise UserError(f"{self} exists but is not a tfresnet run (no config.json); "
                                "pick another --name")
            # Settings added since the run was written have their defaults there.
            raw = canonical(json.loads(config_path.read_text()))
            saved = {**TrainConfig().to_dict(), **raw}
            if "preprocess" not in raw and Path(str(raw.get("dataset"))).is_dir():
                # a transfer then decoded the folder at 64 px, resized inside to 224
                if Transfer(saved["transfer"]) is not Transfer.NONE:
                    raise UserError(f"{self} trained on a folder before version 0.3, which "
                                    "decoded it otherwise; rerun with --fresh to start over")
                saved.update(preprocess="small", image_size=saved["image_size"] or 64)
            wanted = canonical(config.to_dict())
            changed = {k for k in set(saved) | set(wanted)
                       if saved.get(k) != wanted.get(k)} - RESUMABLE_CHANGES
            if changed:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}"
                                   for k in sorted(changed))
                raise UserError(f"{self} holds a run with other settings ({detail}); "
                                "use another --name, or --fresh to start it over")
        return bool(self.resume_points()) and not fresh

    def create(self, config, class_names, fresh):
        """Creates the folder (clearing a previous run with ``fresh``) with the settings
        and the class names."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if fresh:
                for name in (self.BEST, *self.RESUME_POINTS, self.HISTORY, self.SUMMARY):
                    (self / name).unlink(missing_ok=True)
        except PermissionError:
            raise UserError(f"no permission to write {self}; pass --output-dir somewhere "
                            "writable")
        atomic_write_text(self / self.CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
        atomic_write_text(self / self.CLASSES,
                          json.dumps(dict(enumerate(class_names)), indent=2) + "\n")

    def write_summary(self, summary):
        atomic_write_text(self / self.SUMMARY, json.dumps(summary, indent=2) + "\n")


def _comparable(values):
    return {k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}


def _read_json(path, hint=None):
    """A JSON object from ``path``: {} when missing or unreadable, or with ``hint`` a
    `UserError` that ends with it."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        if hint:
            raise UserError(f"{path.parent} has no {path.name}; {hint}")
        return {}
    except (OSError, ValueError) as err:
        if hint:
            raise UserError(f"{path} is not valid JSON ({err}); {hint}")
        return {}
    return values if isinstance(values, dict) else {}


def read_history(path):
    """The rows of a ``history.csv`` as dicts of floats (epoch as int); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()
                         if v not in ("", None)})
    return rows


def load_model(path):
    """Loads a tfresnet ``.keras`` file (a run folder: its ``best.keras``) in Keras' safe
    mode.

    Raises:
        UserError: the file is missing, truncated, not a Keras archive, or not a tfresnet
            `Classifier` (whose normalisation and class names the tools rely on).
    """
    path = Path(path)
    if path.is_dir():
        path = path / RunFolder.BEST
    if not path.is_file():
        raise UserError(f"no model file at {path}; give a run folder with best.keras or a "
                        ".keras file written by tfresnet.train")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a Keras archive (truncated or another format); "
                        "use best.keras or last.keras from a finished epoch")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad archive
        raise UserError(f"{path} could not be loaded as a tfresnet model "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160]})")
    if not isinstance(model, Classifier):
        raise UserError(f"{path} holds a {type(model).__name__}, not a model trained by "
                        "tfresnet.train (no class names or normalisation inside)")
    return model


def load_run_data(target, model, dataset=None, data_dir=None):
    """The data set of a run: ``dataset``, else the one its config (or model) records."""
    config = RunFolder.of(target).config()
    name = dataset or config.get("dataset") or model.dataset
    if name is None:
        raise UserError(f"{target} does not record its data set; pass --dataset")
    data = load_dataset(name, data_dir=data_dir or config.get("data_dir"),
                        val_size=config.get("val_size"), seed=config.get("seed", 0),
                        image_size=model.image_size,
                        view=model.view.kind,  # as it was trained
                        eval_crop=model.eval_crop)
    if data.num_classes != len(model.class_names):
        raise UserError(f"{name} has {data.num_classes} classes but the model predicts "
                        f"{len(model.class_names)}; pass the --dataset it was trained on")
    return data
