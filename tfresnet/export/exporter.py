"""An export of a trained model, declared done only once it ran.

`export` writes one in a registered format (`tfresnet.export.formats`) and compares it with
the Keras model; `ExportedModel` runs one by its own runtime.
"""

import json
from pathlib import Path

import keras
import numpy as np

from tfresnet.data import in_memory
from tfresnet.data.images import evaluation_view
from tfresnet.errors import UserError
from tfresnet.export.formats import FORMATS, format_of, get_format
from tfresnet.runs.files import atomic_write_text, make_dir
from tfresnet.runs.probabilities import predict_probabilities, topk_accuracy
from tfresnet.runs.run_folder import RunFolder, load_model, load_run_data

CALIBRATION_IMAGES = 200  # representative training images for int8


def quantizations():
    """Every ``--quantize`` value some registered format takes."""
    return sorted({q for f in FORMATS.values() for q in f.quantizations})


def serving_model(model):
    """``model`` with a softmax on top, as a functional model whose input is ``images``."""
    height, width = model.image_size
    images = keras.Input((height, width, 3), name="images")
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model(images))
    serving = keras.Model(images, probabilities, name=f"{model.network.name}_probabilities")
    serving(np.zeros((1, height, width, 3), np.float32))  # exporters refuse uncalled models
    return serving


class ExportedModel:
    """An exported model run by its own runtime (TensorFlow, LiteRT, ONNX Runtime, ...):
    ``probabilities(images)`` plus the ``class_names``, ``image_size`` and the `View`
    images are prepared in (``view``: a photo model's centre crop, from ``export.json``).
    """

    def __init__(self, path):
        self.path = Path(path)
        export_format = format_of(self.path)
        if export_format is None:
            raise UserError(f"{self.path} is no export tfresnet knows (formats: "
                            f"{', '.join(FORMATS)})")
        labels = labels_path(self.path)
        if not labels.is_file():
            raise UserError(f"{labels} is missing: it holds the class names of {self.path}; "
                            "export again with python -m tfresnet.export")
        self.class_names = labels.read_text().splitlines()
        record = self.path.parent / "export.json"
        try:
            entry = json.loads(record.read_text()).get(self.path.name, {})
        except (OSError, ValueError, AttributeError):
            entry = {}
        self._run, self.image_size = export_format.load(self.path)
        self.view = evaluation_view(self.image_size, entry.get("eval_crop"))

    def probabilities(self, images, batch_size=64):
        """Class probabilities for RGB pixel ``images``, batch by batch."""
        images = np.asarray(images, np.float32)
        return np.concatenate([self._run(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])


def labels_path(export_path):
    """Where the class names of an export are written: ``<name>.labels.txt`` beside it."""
    export_path = Path(export_path)
    return export_path.with_name(f"{export_path.stem}.labels.txt")


def check_images(target, model, dataset, data_dir, count, need_training_images):
    """Images to check the export on, their labels (or None), where they come from, and
    calibration images for int8 (or None)."""
    try:
        data = load_run_data(target, model, dataset, data_dir)
    except UserError as err:
        if need_training_images:
            raise UserError(f"int8 needs the training images to calibrate on, and they "
                            f"could not be loaded ({err}); pass --dataset/--data-dir")
        print(f"note: checking on random images; the run's data set is not at hand ({err})")
        height, width = model.image_size
        random = np.random.default_rng(0).integers(0, 256, (count, height, width, 3))
        return random.astype(np.uint8), None, "random", None
    images, labels, split = data.x_test, data.y_test, "test"
    if images is None:
        images, labels, split = data.x_val, data.y_val, "validation"
    calibration = None
    if need_training_images:
        pick = np.random.default_rng(0).permutation(len(data.x_train))[:CALIBRATION_IMAGES]
        calibration = in_memory(data.x_train[np.sort(pick)])
    return in_memory(images[:count]), labels[:count], f"{data.name} {split}", calibration


def export(target, fmt, out=None, quantize=None, dataset=None, data_dir=None, count=500):
    """Exports the model of a run folder or ``.keras`` file in format ``fmt``, runs the
    export on check images, and records the comparison in ``export.json``; returns that
    entry."""
    export_format = get_format(fmt)
    if quantize and quantize not in export_format.quantizations:
        takes = ", ".join(export_format.quantizations) or "none"
        raise UserError(f"--format {fmt} takes --quantize {takes}. Received: {quantize}")
    if count <= 0:
        raise UserError(f"--check-images must be positive. Received: {count}")
    # Loaded in float32 whatever the session's policy: TFLite and ONNX take no bfloat16
    # graph, and a run trained in mixed precision keeps float32 weights anyway.
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = load_model(target)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    out = Path(out) if out else (RunFolder.of(target).export_dir
                                 / export_format.default_name(quantize))
    if export_format.suffix and out.suffix != export_format.suffix:
        raise UserError(f"--out for {fmt} must end in {export_format.suffix}. Received: {out}")
    images, labels, source, calibration = check_images(target, model, dataset, data_dir,
                                                       count, quantize == "int8")
    make_dir(out.parent)
    try:
        export_format.write(serving_model(model), out, quantize, calibration)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}; check the folder's "
                        "permissions and free space")
    atomic_write_text(labels_path(out), "\n".join(model.class_names) + "\n")

    expected = predict_probabilities(model, images)
    got = ExportedModel(out).probabilities(images)
    entry = {
        "format": fmt, "quantize": quantize, "path": str(out), "bytes": _size(out),
        "input": {"shape": [None, *model.image_size, 3], "dtype": "float32",
                  "values": "RGB pixels 0-255"},
        "eval_crop": model.preprocessor.crop,
        "output": "class probabilities (softmax)", "labels": labels_path(out).name,
        "check_images": len(images), "check_source": source,
        "max_probability_difference": float(np.max(np.abs(got - expected))),
        "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
    }
    if labels is not None:
        entry["keras_accuracy"] = topk_accuracy(expected, labels, 1)
        entry["export_accuracy"] = topk_accuracy(got, labels, 1)
    record = out.parent / "export.json"
    entries = json.loads(record.read_text()) if record.is_file() else {}
    entries[out.name] = entry
    atomic_write_text(record, json.dumps(entries, indent=2) + "\n")
    return entry


def _size(path):
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
