"""``python -m tfresnet.export``: a trained model as SavedModel, TFLite or ONNX.

Every export takes what the ``.keras`` file takes -- raw RGB pixels, 0-255, as float32,
shape ``(batch, height, width, 3)`` at the model's input size, normalisation inside -- and
returns class probabilities (softmax), shape ``(batch, classes)``. The class names go
beside it (``<name>.labels.txt``, one per line, in output order).

An export is declared done only after it was run: its probabilities are compared with the
Keras model's on the run's test images (random images when the data set is not at hand),
and the largest difference, the top-1 agreement and the file size are printed and stored
in ``export.json`` beside it (one entry per export). ``--quantize int8`` calibrates on
training images and reports its test accuracy next to the float model's.

Exporters: Keras' ``model.export`` (SavedModel; ONNX through tf2onnx, installed with
``pip install -e ".[onnx]"``), TensorFlow's TFLite converter, the LiteRT interpreter.

Example:
    python -m tfresnet.export saved_models/my-run --format tflite --quantize int8
    python -m tfresnet.export saved_models/my-run/best.keras --format saved_model --out srv/1
"""

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from tfresnet.checkpoint import atomic_write, atomic_write_text, load_model, make_dir
from tfresnet.data import in_memory
from tfresnet.errors import UserError, command_parser, require, run_cli
from tfresnet.quiet import native_stderr_silenced

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")
CALIBRATION_IMAGES = 200  # representative training images for int8


def serving_model(model):
    """``model`` with a softmax on top, as a functional model whose input is ``images``."""
    import keras

    height, width = model.image_size
    images = keras.Input((height, width, 3), name="images")
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model(images))
    serving = keras.Model(images, probabilities, name=f"{model.network.name}_probabilities")
    serving(np.zeros((1, height, width, 3), np.float32))  # exporters refuse uncalled models
    return serving


def _write_saved_model(serving, out):
    """A SavedModel folder, swapped in only once complete."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    serving.export(str(tmp), format="tf_saved_model", verbose=False)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _write_tflite(serving, out, quantize, calibration):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved:
        serving.export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":  # int8 weights and activations, float32 input and output
            converter.representative_dataset = lambda: (
                [image[None].astype(np.float32)] for image in calibration)
        flatbuffer = converter.convert()
    atomic_write(out, lambda tmp: tmp.write_bytes(flatbuffer))


def _write_onnx(serving, out):
    require("onnxruntime", "onnx")  # the check after the export runs it
    require("tf2onnx", "onnx")
    with warnings.catch_warnings():  # a NumPy FutureWarning inside Keras' tf2onnx shim
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(out, lambda tmp: serving.export(str(tmp), format="onnx", verbose=False))


class ExportedModel:
    """An exported model run by its own runtime (TensorFlow, LiteRT or ONNX Runtime):
    ``probabilities(images)`` plus the ``class_names``, ``image_size`` and ``eval_crop``
    (a photo model's centre crop, from ``export.json``; None: resize whole) it was made for.
    """

    def __init__(self, path):
        self.path = Path(path)
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
        self.eval_crop = entry.get("eval_crop")
        if self.path.suffix == ".tflite":
            self._run, self.image_size = self._tflite()
        elif self.path.suffix == ".onnx":
            self._run, self.image_size = self._onnx()
        else:
            self._run, self.image_size = self._saved_model()

    def _tflite(self):
        litert = require("ai_edge_litert.interpreter", "tflite")
        try:
            interpreter = litert.Interpreter(model_path=str(self.path))
        except (ValueError, RuntimeError) as err:
            raise UserError(f"{self.path} is not a TFLite model LiteRT can load ({err})")
        source = interpreter.get_input_details()[0]
        self._shape = None

        def run(images):
            if self._shape != images.shape:
                interpreter.resize_tensor_input(source["index"], images.shape)
                with native_stderr_silenced():  # LiteRT's delegate notice
                    interpreter.allocate_tensors()
                self._shape = images.shape
            interpreter.set_tensor(source["index"], images)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

        return run, tuple(int(d) for d in source["shape_signature"][1:3])

    def _onnx(self):
        onnxruntime = require("onnxruntime", "onnx")
        session = onnxruntime.InferenceSession(str(self.path),
                                               providers=["CPUExecutionProvider"])
        source = session.get_inputs()[0]
        return (lambda images: session.run(None, {source.name: images})[0],
                tuple(int(d) for d in source.shape[1:3]))

    def _saved_model(self):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(self.path))  # owns the variables
        shape = self._loaded.serve.input_signature[0].shape
        return (lambda images: self._loaded.serve(tf.constant(images)).numpy(),
                (shape[1], shape[2]))

    def probabilities(self, images, batch_size=64):
        """Class probabilities for RGB pixel ``images``, batch by batch."""
        images = np.asarray(images, np.float32)
        return np.concatenate([self._run(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])


def labels_path(export_path):
    """Where the class names of an export are written: ``<name>.labels.txt`` beside it."""
    export_path = Path(export_path)
    return export_path.with_name(f"{export_path.stem}.labels.txt")


def default_out(target, fmt, quantize):
    """``<run>/export/model[_<quantize>].<ext>`` (``saved_model/`` for SavedModel)."""
    from tfresnet.inference import run_folder

    folder = run_folder(target) / "export"
    if fmt == "saved_model":
        return folder / "saved_model"
    suffix = f"_{quantize}" if quantize else ""
    return folder / f"model{suffix}.{fmt}"


def check_images(target, model, dataset, data_dir, count, need_training_images):
    """Images to check the export on, their labels (or None), where they come from, and
    calibration images for int8 (or None)."""
    from tfresnet.inference import load_run_data

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
    """Exports the model of a run folder or ``.keras`` file, runs the export on check
    images, and records the comparison in ``export.json``; returns that entry."""
    from tfresnet.inference import predict_probabilities, topk_accuracy

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize and fmt != "tflite":
        raise UserError(f"--quantize applies to --format tflite only. Received: {fmt}")
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
    out = Path(out) if out else default_out(target, fmt, quantize)
    if fmt != "saved_model" and out.suffix != f".{fmt}":
        raise UserError(f"--out for {fmt} must end in .{fmt}. Received: {out}")
    images, labels, source, calibration = check_images(target, model, dataset, data_dir,
                                                       count, quantize == "int8")
    make_dir(out.parent)
    serving = serving_model(model)
    try:
        if fmt == "saved_model":
            _write_saved_model(serving, out)
        elif fmt == "tflite":
            _write_tflite(serving, out, quantize, calibration)
        else:
            _write_onnx(serving, out)
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
        "eval_crop": model.eval_crop,
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


def main(argv=None):
    parser = command_parser("tfresnet.export", __doc__)
    parser.add_argument("target", help="run folder (with best.keras) or a .keras file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", help="where to write (default: <run>/export/model.<format>)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="TFLite only")
    parser.add_argument("--dataset", help="data set to check on (default: the run's own)")
    parser.add_argument("--data-dir", help="folder with the CIFAR pickles")
    parser.add_argument("--check-images", type=int, default=500,
                        help="test images the export is compared on")
    args = parser.parse_args(argv)
    entry = export(args.target, args.format, args.out, args.quantize, args.dataset,
                   args.data_dir, args.check_images)
    line = (f"{entry['path']}: {entry['bytes'] / 1e6:.2f} MB; on {entry['check_images']} "
            f"{entry['check_source']} images: max probability difference "
            f"{entry['max_probability_difference']:.2e}, top-1 agreement "
            f"{100 * entry['top1_agreement']:.2f}%")
    if "export_accuracy" in entry:
        line += (f"; accuracy {100 * entry['export_accuracy']:.2f}% "
                 f"(Keras {100 * entry['keras_accuracy']:.2f}%)")
    print(line)
    return 0


def cli():
    sys.exit(run_cli("tfresnet.export", main))


if __name__ == "__main__":
    cli()
