"""Each extension point is one registration (CONTRIBUTING.md, "Adding to tfresnet"): a
toy model, augmentation, data source, export format and search name, added at runtime,
work end to end through the commands."""

import json
import os
import shutil
import tempfile

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfresnet.cli.export import main as export_main
from tfresnet.cli.predict import main as predict_main
from tfresnet.cli.train import main as train_main
from tfresnet.cli.tune import main as tune_main
from tfresnet.data import pipeline, sources
from tfresnet.data.digits import load_digits_rgb
from tfresnet.export import formats
from tfresnet.models import registry
from tfresnet.models.resnet import ClassifierHead
from tfresnet.training.run_folder import load_model
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
        patch.setitem(pipeline.AUGMENTATIONS, "brighten", brighten)
        pipeline.augmentation()(brighten)  # the decorator, as a module would apply it
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
