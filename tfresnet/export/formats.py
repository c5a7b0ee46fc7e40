"""The export formats, one `ExportFormat` record each: how it is written, recognised and run.

A new format is one `register_format` call: ``python -m tfresnet.export --format NAME``,
``python -m tfresnet.predict`` on its files and the run report then know it.
"""

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfresnet.errors import UserError, require
from tfresnet.quiet import native_stderr_silenced
from tfresnet.runs.files import atomic_write


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Args:
        name: the ``--format`` value.
        suffix: the file suffix (``.tflite``); ``""`` for a folder.
        write: ``write(serving, out, quantize, calibration)`` writes the serving model (a
            functional Keras model: float32 RGB pixels in, probabilities out) to ``out``
            atomically; ``calibration``: uint8 training images (int8 only), else None.
        load: ``load(path)`` -> ``(run, (height, width))``, ``run(float32 images)`` giving
            the probabilities by the format's own runtime.
        quantizations: the ``--quantize`` values it takes.
        folder_marker: for a folder format, the file that marks such a folder.
    """

    name: str
    suffix: str
    write: Callable
    load: Callable
    quantizations: tuple = ()
    folder_marker: str | None = None

    def default_name(self, quantize=None):
        """The file name of an export into a run's ``export/`` folder."""
        if not self.suffix:
            return self.name
        return f"model{f'_{quantize}' if quantize else ''}{self.suffix}"

    def matches(self, path):
        path = Path(path)
        if self.folder_marker:
            return (path / self.folder_marker).is_file()
        return path.suffix == self.suffix


FORMATS = {}


def register_format(export_format):
    """Adds ``export_format`` to `FORMATS`; returns it."""
    FORMATS[export_format.name] = export_format
    return export_format


def get_format(name):
    """The registered format ``name``, or a `UserError` listing them."""
    if name not in FORMATS:
        raise UserError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(path):
    """The format of an exported file or folder, or None for anything else (a ``.keras``
    file, a run folder)."""
    return next((f for f in FORMATS.values() if f.matches(path)), None)


def _write_saved_model(serving, out, quantize, calibration):
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


def _load_saved_model(path):
    loaded = tf.saved_model.load(str(path))  # the closure keeps it, and so its variables
    shape = loaded.serve.input_signature[0].shape
    return lambda images: loaded.serve(tf.constant(images)).numpy(), (shape[1], shape[2])


def _write_tflite(serving, out, quantize, calibration):
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


def _load_tflite(path):
    litert = require("ai_edge_litert.interpreter", "tflite")
    try:
        interpreter = litert.Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{path} is not a TFLite model LiteRT can load ({err})")
    source = interpreter.get_input_details()[0]
    allocated = {"shape": None}

    def run(images):
        if allocated["shape"] != images.shape:
            interpreter.resize_tensor_input(source["index"], images.shape)
            with native_stderr_silenced():  # LiteRT's delegate notice
                interpreter.allocate_tensors()
            allocated["shape"] = images.shape
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run, tuple(int(d) for d in source["shape_signature"][1:3])


def _write_onnx(serving, out, quantize, calibration):
    require("onnxruntime", "onnx")  # the check after the export runs it
    require("tf2onnx", "onnx")
    with warnings.catch_warnings():  # a NumPy FutureWarning inside Keras' tf2onnx shim
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write(out, lambda tmp: serving.export(str(tmp), format="onnx", verbose=False))


def _load_onnx(path):
    onnxruntime = require("onnxruntime", "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    return (lambda images: session.run(None, {source.name: images})[0],
            tuple(int(d) for d in source.shape[1:3]))


# Keras' own exporter (SavedModel; ONNX through tf2onnx) and TensorFlow's TFLite converter.
register_format(ExportFormat("saved_model", "", _write_saved_model, _load_saved_model,
                             folder_marker="saved_model.pb"))
register_format(ExportFormat("tflite", ".tflite", _write_tflite, _load_tflite,
                             quantizations=("float16", "int8")))
register_format(ExportFormat("onnx", ".onnx", _write_onnx, _load_onnx))
