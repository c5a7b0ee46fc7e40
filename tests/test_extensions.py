"""Each extension point is one registration (CONTRIBUTING.md, "Adding to tfresnet"): a
toy model, augmentation, data source, export format and search name, added at runtime,
work end to end through the commands; a toy optimizer flag is two edits of the source."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfresnet
from tfresnet.cli.export import main as export_main
from tfresnet.cli.predict import main as predict_main
from tfresnet.cli.train import main as train_main
from tfresnet.cli.tune import main as tune_main
from tfresnet.data import augment, sources
from tfresnet.data.digits import load_digits_rgb
from tfresnet.export import formats
from tfresnet.models import registry
from tfresnet.models.layers import ClassifierHead
from tfresnet.runs.run_folder import load_model
from tfresnet.tuning import search


@keras.saving.register_keras_serializable(package="tests")
class TinyNet(ClassifierHead, keras.Model):
    """One 3x3 convolution, then the shared head."""

    def __init__(self, num_classes=10, width=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.width = num_classes, width
        self.conv = keras.layers.Conv2D(round(8 * width), 3, activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = None
        self.fc = keras.layers.Dense(num_classes, dtype="float32", name="fc")

    def feature_map(self, inputs, training=None):
        return self.conv(inputs)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "width": self.width}


def tiny_net(num_classes, width=1.0):
    return TinyNet(num_classes, width=width, name="tiny_net")


def brighten(images, labels, seed, amount=10.0):
    """Adds ``amount`` to a random half of the images."""
    chosen = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(chosen[:, None, None, None], images + amount, images), labels


def few_digits(data_dir=None, download=True):
    """The digits, 300 training and 60 test images."""
    digits = load_digits_rgb()
    return sources.Source(x_train=digits.x_train[:300], y_train=digits.y_train[:300],
                          x_test=digits.x_test[:60], y_test=digits.y_test[:60],
                          class_names=[f"digit {c}" for c in digits.class_names])


def write_toy(serving, out, quantize, calibration):
    """The serving model as a .keras archive under the suffix .toy."""
    with tempfile.TemporaryDirectory() as folder:
        serving.save(os.path.join(folder, "model.keras"))
        shutil.move(os.path.join(folder, "model.keras"), out)


def load_toy(path):
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(path, os.path.join(folder, "model.keras"))
        serving = keras.saving.load_model(os.path.join(folder, "model.keras"))
    return lambda images: serving.predict(images, verbose=0), tuple(serving.input_shape[1:3])


@pytest.fixture(scope="module")
def toys():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._REGISTRY, "tiny_net", tiny_net)
        patch.setitem(augment.AUGMENTATIONS, "brighten", brighten)
        augment.augmentation()(brighten)  # the decorator, as a module would apply it
        patch.setitem(sources.SOURCES, "few_digits", few_digits)
        patch.setitem(formats.FORMATS, "toy", formats.ExportFormat("toy", ".toy", write_toy,
                                                                  load_toy))
        patch.setitem(search.SEARCH_SPACE, "momentum",
                      lambda hp: hp.Choice("momentum", [0.5, 0.8]))
        yield


TOY_RUN = ["--dataset", "few_digits", "--model", "tiny_net", "--batch-size", "50",
           "--no-tensorboard", "--no-visualize"]


def test_a_toy_model_augmentation_and_source_train_and_a_toy_format_exports(toys, tmp_path):
    assert train_main([*TOY_RUN, "--width", "0.5", "--augment", "flip,brighten:amount=20",
                       "--epochs", "1", "--output-dir", str(tmp_path), "--name", "toy"]) == 0
    run = tmp_path / "toy"
    model = load_model(run / "best.keras")
    assert isinstance(model.network, TinyNet) and model.network.conv.filters == 4
    assert model.class_names[0] == "digit 0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["train"] + summary["data"]["val"] == 300
    assert summary["data"]["test"] == 60

    assert export_main([str(run), "--format", "toy", "--check-images", "20"]) == 0
    entry = json.loads((run / "export" / "export.json").read_text())["model.toy"]
    assert entry["max_probability_difference"] < 1e-5 and entry["top1_agreement"] == 1.0
    image = tmp_path / "digit.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 200, np.uint8))
    out = tmp_path / "p.json"
    assert predict_main([str(run / "export" / "model.toy"), str(image), "--json",
                         str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert row["top"][0]["class"].startswith("digit ")


def test_a_toy_option_is_refused_by_a_model_without_it(toys, tmp_path):
    from tfresnet.errors import run_cli

    args = [*TOY_RUN, "--stem", "imagenet", "--epochs", "1", "--output-dir", str(tmp_path)]
    assert run_cli("tfresnet.train", train_main, args) == 2
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_toy_search_name_is_searched(toys, tmp_path):
    assert tune_main([*TOY_RUN, "--epochs-per-trial", "1", "--max-trials", "1", "--search",
                      "momentum", "--output-dir", str(tmp_path), "--name", "toy"]) == 0
    best = json.loads((tmp_path / "tune" / "toy" / "best_hparams.json").read_text())
    assert best["momentum"] in (0.5, 0.8)


def test_a_model_name_that_is_taken_is_refused():
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        registry.register_model("resnet18")(tiny_net)
    assert registry._REGISTRY["resnet18"] is not tiny_net


# A toy optimizer with a flag of its own is two edits, both in tfresnet/optim/: its entry in
# the `OPTIMIZERS` registry (optimizers.py), and its setting as a field of
# `OptimizerSettings` (settings.py), which gives `TrainConfig` the key and ``train`` the
# flag. A dataclass's fields are fixed when its module is imported, so the test makes the
# two edits, (text, the line it goes before), in a copy of the package and trains through
# the command in a process of its own.
TOY_OPTIMIZER_EDITS = {
    "optim/optimizers.py": ("""\
    "toy_rmsprop": lambda settings, lr, decay, common: keras.optimizers.RMSprop(
        lr, rho=settings.toy_rho, weight_decay=decay, **common),
""", '    "sgd": lambda settings, lr, decay, common'),
    "optim/settings.py": ("""\
    toy_rho: float = setting(0.9, "toy_rmsprop: decay of the mean squared gradient",
                             "optimizer")
""", "    clip_norm: float = setting("),
}


@pytest.mark.slow
def test_a_toy_optimizer_flag_is_two_edits(tmp_path):
    package = tmp_path / "source" / "tfresnet"
    shutil.copytree(Path(tfresnet.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for module, (added, before) in TOY_OPTIMIZER_EDITS.items():
        text = (package / module).read_text()
        assert text.count(before) == 1, module
        (package / module).write_text(text.replace(before, added + before))
    for label in range(2):  # two classes of 8 images: one step of 14, 2 held out
        for index in range(8):
            image = tmp_path / "folder" / "train" / f"class {label}" / f"{index}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image), np.full((16, 16, 3), 60 + 120 * label + index, np.uint8))
    done = subprocess.run(
        [sys.executable, "-m", "tfresnet.train", "--dataset", str(tmp_path / "folder"),
         "--model", "small_cnn", "--width", "0.25", "--epochs", "1", "--batch-size", "16",
         "--optimizer", "toy_rmsprop", "--toy-rho", "0.8", "--no-tensorboard",
         "--no-visualize", "--output-dir", str(tmp_path / "runs"), "--name", "toy"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "source")}, cwd=tmp_path,
        capture_output=True, text=True, timeout=600)  # cwd: not this checkout's tfresnet
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "toy"
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"] == "toy_rmsprop" and config["toy_rho"] == 0.8
    optimizer = load_model(run / "last.keras").optimizer
    assert isinstance(optimizer, keras.optimizers.RMSprop) and optimizer.rho == 0.8
    assert int(optimizer.iterations.numpy()) == 1
