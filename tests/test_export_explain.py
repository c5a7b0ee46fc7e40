"""Exports (SavedModel, TFLite, ONNX) checked against Keras, and Grad-CAM: its shape and
range on every kind of network, and that it finds the object that decides the class."""

import json

import cv2
import keras
import numpy as np
import pytest

from conftest import TINY
from tfresnet.cli.explain import main as explain_main
from tfresnet.cli.export import main as export_main
from tfresnet.cli.predict import main as predict_main
from tfresnet.cli.train import main as train_main
from tfresnet.data import load_dataset
from tfresnet.evaluation.gradcam import grad_cam
from tfresnet.export.exporter import ExportedModel, labels_path
from tfresnet.models import Classifier, ImagePreprocessor, get_model, list_models
from tfresnet.runs.run_folder import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    # Three epochs: a two-epoch run can end near chance (seed 0 did, at 14 %), where the
    # int8 export's top-1 agreement measures noise (87.5 % there; 96-97 % after three).
    assert train_main([*TINY, "--epochs", "3", "--output-dir", str(root), "--name", "r"]) == 0
    return root / "r"


def keras_probabilities(run_dir, images):
    return keras.ops.softmax(load_model(run_dir)(images)).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("fmt,name", [("saved_model", "saved_model"), ("tflite", "model.tflite"),
                                      ("onnx", "model.onnx")])
def test_export_round_trip_equals_keras(run, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("tf2onnx")
    assert export_main([str(run), "--format", fmt]) == 0
    out = run / "export" / name
    entry = json.loads((run / "export" / "export.json").read_text())[name]
    assert entry["check_source"] == "digits test" and entry["check_images"] == 360
    assert entry["max_probability_difference"] < 1e-4 and entry["top1_agreement"] == 1.0
    assert entry["bytes"] > 0 and entry["output"] == "class probabilities (softmax)"

    # Independently of export.json: reload with the format's own runtime and compare.
    images = load_dataset("digits").x_test[:50]
    exported = ExportedModel(out)
    np.testing.assert_allclose(exported.probabilities(images),
                               keras_probabilities(run, images), atol=1e-4)
    assert labels_path(out).read_text().split() == [str(d) for d in range(10)]
    assert exported.image_size == (32, 32)


@pytest.mark.slow
def test_int8_tflite_reports_accuracy_close_to_float_and_predict_runs_it(run, tmp_path):
    out = tmp_path / "phone" / "digits_int8.tflite"
    assert export_main([str(run), "--format", "tflite", "--quantize", "int8",
                        "--out", str(out)]) == 0
    entry = json.loads((out.parent / "export.json").read_text())[out.name]
    # The stated bound: int8 within 5 accuracy points of the float model on the test set.
    assert abs(entry["export_accuracy"] - entry["keras_accuracy"]) <= 0.05
    assert entry["quantize"] == "int8" and entry["top1_agreement"] >= 0.9

    images = load_dataset("digits").x_test[:6]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
    assert predict_main([str(out), str(folder), "--json", str(tmp_path / "p.json")]) == 0
    predicted = [int(r["top"][0]["class"]) for r in json.loads((tmp_path / "p.json").read_text())]
    expected = ExportedModel(out).probabilities(images).argmax(1).tolist()
    assert predicted == expected


def small_classifier(name):
    if name.endswith("_imagenet"):
        backbone = get_model(name, 5, image_size=32)
    else:
        backbone = get_model(name, 5, width=0.0625)
    return Classifier(backbone, ImagePreprocessor.from_mean_std((32, 32), [127] * 3, [64] * 3),
                      list("abcde"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_grad_cam_shape_range_and_exact_split_on_every_registered_network(name):
    model = small_classifier(name)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    cams = grad_cam(model, images)
    assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    # Grad-CAM splits the task at feature_map/head: together they are the whole call.
    split = model.head(model.feature_map(images))
    np.testing.assert_allclose(split, model(images), rtol=1e-5, atol=1e-5)
    assert grad_cam(model, images, class_index=[0, 1, 4]).shape == (3, 32, 32)


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
SIDE = 12


def write_colour_objects(root, per_class, seed=0, size=32):
    """Folders in which only the colour of a square decides the class; the square and a
    grey distractor of the same size sit at random, separate places on grey noise.
    Returns each test image's object box ``(top, left)``."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for split, count in (("train", per_class), ("test", per_class // 4)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(90, 150, (size, size, 3)).astype(np.uint8)
                while True:
                    (top, left), (grey_top, grey_left) = rng.integers(0, size - SIDE + 1, (2, 2))
                    if max(abs(top - grey_top), abs(left - grey_left)) >= SIDE:
                        break
                image[grey_top:grey_top + SIDE, grey_left:grey_left + SIDE] = 230
                image[top:top + SIDE, left:left + SIDE] = colour
                cv2.imwrite(str(folder / f"{i}.png"), image[..., ::-1])
                if split == "test":
                    boxes[(name, i)] = (top, left)
    return boxes


@pytest.fixture(scope="module")
def colour_objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    return root, write_colour_objects(root, per_class=100)


# Measured peak-on-object rates: small_cnn (8x8 last map) 75/75; resnet18 (4x4 last map,
# each cell sees the whole image) 50/75, 65/75 and 69/75 for seeds 0-2. A random peak
# lands on the (widened) object about 20 % of the time.
@pytest.mark.slow
@pytest.mark.parametrize("model,width,least", [("small_cnn", "0.5", 0.9),
                                               ("resnet18", "0.125", 0.6)])
def test_grad_cam_peak_lies_on_the_object_that_decides_the_class(colour_objects, tmp_path,
                                                                 model, width, least):
    root, boxes = colour_objects
    args = ["--dataset", root, "--image-size", "32", "--model", model, "--width", width,
            "--epochs", "6", "--batch-size", "32", "--lr", "0.05", "--augment", "flip",
            "--deterministic", "--no-tensorboard", "--no-visualize", "--output-dir", tmp_path,
            "--name", "objects"]
    assert train_main([str(a) for a in args]) == 0
    classifier = load_model(tmp_path / "objects")
    images = np.stack([cv2.imread(str(root / "test" / n / f"{i}.png"))[..., ::-1]
                       for n, i in boxes])
    hits = 0
    for cam, (top, left) in zip(grad_cam(classifier, images), boxes.values()):
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        hits += top - 1 <= y <= top + SIDE and left - 1 <= x <= left + SIDE
    assert hits / len(boxes) >= least, f"{hits} of {len(boxes)} peaks on the object"


@pytest.mark.slow
def test_explain_cli_writes_one_captioned_overlay_per_image(run, tmp_path, capsys):
    images = load_dataset("digits").x_test[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"digit{i}.png"), image[..., ::-1])
    (folder / "notes.txt").write_text("not an image")  # not an image file: ignored
    (folder / "broken.png").write_text("not an image")
    assert explain_main([str(run), str(folder), "--out", str(tmp_path / "cams"),
                         "--size", "96"]) == 0
    result = capsys.readouterr()
    assert "broken.png" in result.err  # skipped with a warning naming it
    assert "notes.txt" not in result.err
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert written == ["digit0_cam.png", "digit1_cam.png", "digit2_cam.png"]
    picture = cv2.imread(str(tmp_path / "cams" / "digit0_cam.png"))
    assert picture.shape == (96 + 28, 2 * 96, 3)  # original | overlay, caption below
    assert len(result.out.strip().splitlines()) == 3 and "%" in result.out
