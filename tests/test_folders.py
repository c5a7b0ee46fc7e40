"""Image folders: listing (nested folders, junk, broken files), decoding (EXIF, pixel
formats), the small and photo views, streaming with flat memory, exact resume, one share
per worker, and the commands on a streamed run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from conftest import (
    REPO,
    free_ports,
    kill_after_first_epoch,
    kill_after_resume_saves,
    run_cli,
    weights,
)
from tfresnet import load_model
from tfresnet.cli.evaluate import main as evaluate_main
from tfresnet.cli.export import main as export_main
from tfresnet.data import channel_stats, folders, load_dataset
from tfresnet.data.folders import choose_view
from tfresnet.data.images import View, decode, random_crop_box
from tfresnet.data.pipeline import make_train_pipeline
from tfresnet.errors import UserError
from tfresnet.evaluation.predictions import predict

COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}
original_decode = decode


def write_photos(root, per_class, size=(48, 64), seed=0, ext=".jpg", nested=False):
    """Per class, ``per_class`` noisy images of the class colour (``size`` = (h, w)); with
    ``nested``, every other one in a sub-folder."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        for i in range(per_class):
            folder = root / name / ("2024" / Path("trip") if nested and i % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            image = np.clip(rng.normal(colour, 25, (*size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{i}{ext}"), image[..., ::-1])


def test_nested_folders_are_read_and_junk_is_skipped_with_one_warning(tmp_path, capsys):
    write_photos(tmp_path / "set" / "train", 6, nested=True)
    write_photos(tmp_path / "set" / "test", 2)
    bees = tmp_path / "set" / "train" / "blue"
    for junk in (".DS_Store", "Thumbs.db", "notes.txt"):
        (bees / junk).write_text("not an image")
    (bees / "broken.jpg").write_text("not a jpeg")
    (bees / "2024" / "empty.png").write_bytes(b"")
    data = load_dataset(str(tmp_path / "set"), val_size=2, image_size=(24, 24))
    assert data.class_names == ["blue", "red"]
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (10, 2, 4)
    assert data.counts() == {"train": 10, "val": 2, "test": 4, "skipped_files": 2}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "2 file(s)" in warnings[0] and "broken.jpg" in warnings[0]
    assert "empty.png" in warnings[0] and "notes.txt" not in warnings[0]
    assert data.x_train.shape == (10, 24, 24, 3)
    decoded = data.x_train.load()
    assert decoded.dtype == np.uint8 and decoded.shape == (10, 24, 24, 3)


@pytest.mark.parametrize("setup,message", [
    (lambda root: root.mkdir(), "has no class folders"),
    (lambda root: (root / "train" / "cats").mkdir(parents=True), "has no readable images"),
    (lambda root: ((root / "train" / "cats").mkdir(parents=True),
                   (root / "train" / "cats" / "a.txt").write_text("x")),
     "has no readable images"),
])
def test_image_folder_errors(tmp_path, setup, message):
    root = tmp_path / "set"
    setup(root)
    with pytest.raises(UserError, match=message):
        load_dataset(str(root))


def test_val_and_test_classes_must_be_in_train(tmp_path):
    write_photos(tmp_path / "set" / "train", 2)
    write_photos(tmp_path / "set" / "test", 1)
    (tmp_path / "set" / "test" / "green").mkdir()
    cv2.imwrite(str(tmp_path / "set" / "test" / "green" / "0.png"), np.zeros((8, 8, 3)))
    result = run_cli("tfresnet.train", "--dataset", tmp_path / "set", "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("has classes not in train/: green")


def _half_red(height=20, width=40):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)  # RGB: the left half red
    return image


def test_exif_orientation_and_every_pixel_format_become_rgb(tmp_path):
    image = Image.fromarray(_half_red())
    files = {"grey.png": image.convert("L"), "rgba.png": image.convert("RGBA"),
             "palette.png": image.convert("P"), "palette.gif": image.convert("P"),
             "cmyk.jpg": image.convert("CMYK"),
             "grey16.png": Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)}
    for name, picture in files.items():
        picture.save(tmp_path / name)
    cv2.imwrite(str(tmp_path / "rgb16.png"), _half_red()[..., ::-1].astype(np.uint16) * 257)
    for name in [*files, "rgb16.png"]:
        pixels = decode(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.shape == (20, 40, 3), name
        left, right = pixels[:, :20].mean(axis=(0, 1)), pixels[:, 20:].mean(axis=(0, 1))
        assert right.max() < 5, name
        if name.startswith("grey"):  # red in grey: 0.299 * 255 in every channel
            assert np.allclose(left, 76, atol=2), (name, left)
        else:
            assert left[0] > 240 and left[1:].max() < 10, (name, left)

    exif = image.getexif()
    exif[0x0112] = 6  # stored upright-left, shown rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = decode(tmp_path / "rotated.jpg")
    assert pixels.shape == (40, 20, 3)  # the left (red) half is now the top half
    assert pixels[:18, :, 0].mean() > 240 and pixels[22:].max() < 20


def test_view_rule_small_square_images_else_photos():
    assert choose_view("auto", [(32, 32)] * 5) == "small"
    assert choose_view("auto", [(32, 32)] * 4 + [(64, 64)]) == "small"
    assert choose_view("auto", [(32, 32)] * 4 + [(40, 30)]) == "photo"  # not square
    assert choose_view("auto", [(96, 96)]) == "photo"  # square but large
    assert choose_view("photo", [(32, 32)]) == "photo"
    assert choose_view("small", [(500, 375)]) == "small"


def test_default_input_sizes(tmp_path, capsys):
    write_photos(tmp_path / "small", 2, size=(32, 32), ext=".png")
    write_photos(tmp_path / "photos", 2, size=(150, 200))
    small = load_dataset(str(tmp_path / "small"), val_size=0)
    assert (small.x_train.view.kind, small.image_size) == ("small", (64, 64))
    assert "upsampled" in capsys.readouterr().err  # 32 px shown at 64: said in one line
    photos = load_dataset(str(tmp_path / "photos"), val_size=0)
    assert (photos.x_train.view.kind, photos.image_size) == ("photo", (64, 64))
    assert "upsampled" not in capsys.readouterr().err
    backbone = load_dataset(str(tmp_path / "photos"), val_size=0, image_size=(224, 224))
    assert backbone.image_size == (224, 224)
    assert "4 of 4 training images" in capsys.readouterr().err


def test_random_resized_crop_stays_inside_its_ranges():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(500):
        top, left, height, width = random_crop_box((375, 500), rng, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + height <= 375 and 0 <= left and left + width <= 500
        areas.append(height * width / (375 * 500))
        ratios.append(width / height)
    assert 0.07 < min(areas) and max(areas) <= 1.0 and np.median(areas) < 0.6
    assert 0.74 < min(ratios) and max(ratios) < 1.35
    # A range no crop can satisfy falls back to the largest centred crop of clamped ratio.
    assert random_crop_box((100, 400), rng, (0.9, 1.0), (1.0, 1.0)) == (0, 150, 100, 100)


def test_photo_evaluation_is_a_centre_crop_that_keeps_the_aspect_ratio():
    image = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    view = View("photo", (50, 50), eval_crop=0.5)
    np.testing.assert_array_equal(view.evaluate(image), image[25:75, 75:125])
    full = View("photo", (100, 100), eval_crop=1.0).evaluate(image)
    np.testing.assert_array_equal(full, image[:, 50:150])  # no squashing
    assert View("small", (50, 50)).evaluate(image).shape == (50, 50, 3)  # resized whole


def test_streamed_epochs_replay_exactly_from_any_epoch(tmp_path):
    write_photos(tmp_path / "set", 8, size=(60, 80))
    data = load_dataset(str(tmp_path / "set"), val_size=0, image_size=(32, 32))
    files = data.x_train

    def epochs(start, count):
        stream, steps = make_train_pipeline(files, data.y_train, 2, 8, seed=3,
                                            start_epoch=start)
        return [x.numpy() for x, _ in stream.take(steps * count)]

    whole, resumed = epochs(0, 2), epochs(1, 1)
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(whole[0], whole[2])  # other crops (and order) next epoch
    assert whole[0].shape == (8, 32, 32, 3) and whole[0].dtype == np.uint8


def test_statistics_are_bounded_and_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 8, 8, 3), np.uint8)
    mean, std = channel_stats(images, chunk_pixels=7 * 64)  # 7 images a chunk
    pixels = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)


# Trains on a folder in this process and prints the peak resident memory (MB).
PEAK = """
import resource, sys
from tfresnet.cli.train import main
main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_folder(tmp_path):
    # 1,200 more images at 160 px are 92 MB of pixels: holding them once would fail this.
    # Both runs take 46 steps, so that tf.data's buffers, which grow while it tunes itself,
    # end equally warm (with 3 steps against 21, the peak differed by 90 MB).
    peaks = []
    for count, epochs in ((150, 5), (750, 1)):
        write_photos(tmp_path / f"f{count}", count, size=(180, 240))
        done = subprocess.run(
            [sys.executable, "-c", PEAK, "--dataset", str(tmp_path / f"f{count}"),
             "--image-size", "160", "--model", "small_cnn", "--width", "0.25", "--epochs",
             str(epochs),
             "--batch-size", "32", "--val-size", "0", "--no-tensorboard", "--no-visualize",
             "--output-dir", str(tmp_path / "runs")],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert done.returncode == 0, done.stderr[-2000:]
        peaks.append(float(done.stdout.split("PEAK")[-1]))
    assert peaks[1] - peaks[0] < 25, f"peak RSS {peaks[0]:.0f} MB -> {peaks[1]:.0f} MB"


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "train", 24, size=(45, 60), nested=True)
    write_photos(root / "test", 4, size=(60, 45))
    return root


PHOTO_RUN = ["--image-size", "32", "--model", "small_cnn", "--width", "0.25", "--lr", "0.02",
             "--batch-size", "8", "--augment", "standard", "--no-tensorboard", "--no-visualize"]


@pytest.mark.slow
def test_kill_and_resume_on_a_streamed_folder_gives_the_uninterrupted_weights(photo_folder,
                                                                              tmp_path,
                                                                              monkeypatch):
    common = ["--dataset", photo_folder, *PHOTO_RUN, "--epochs", "5", "--deterministic"]
    reference = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "ref")
    assert reference.returncode == 0, reference.stderr
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["data"] == {"train": 43, "val": 5, "test": 8, "skipped_files": 0,
                               "image_size": [32, 32], "preprocess": "photo"}
    assert "43 training, 5 validation, 8 test images" in reference.stdout
    done = kill_after_first_epoch(tmp_path / "killed", *common)
    assert done < 5, "the kill should land before the end"
    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras")):
        np.testing.assert_array_equal(a, b)

    # Evaluation decodes the test split only, in the view the run's test metrics used.
    decoded = []
    monkeypatch.setattr(folders, "decode", lambda path: decoded.append(str(path)) or
                        original_decode(path))
    assert evaluate_main([str(tmp_path / "ref")]) == 0
    assert len(decoded) == 8 and all("/test/" in path for path in decoded)
    result = json.loads((tmp_path / "ref" / "evaluation.json").read_text())
    assert result["images"] == 8 and result["top1"] == summary["test_accuracy"]
    predicted = run_cli("tfresnet.predict", tmp_path / "ref", photo_folder / "test" / "red",
                        "--json", tmp_path / "p.json")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 4 and all(len(r["top"]) == 2 for r in rows)
    # An export sees the files as the Keras model does (its centre crop travels along).
    assert export_main([str(tmp_path / "ref"), "--format", "tflite", "--check-images",
                        "8"]) == 0
    exported = predict(tmp_path / "ref" / "export" / "model.tflite", photo_folder / "test" /
                       "red", top_k=2)
    for row, keras_row in zip(exported, predict(tmp_path / "ref", photo_folder / "test" /
                                                "red", top_k=2)):
        assert row["top"][0]["class"] == keras_row["top"][0]["class"]
        assert abs(row["top"][0]["probability"] - keras_row["top"][0]["probability"]) < 1e-4


@pytest.mark.slow
def test_kill_inside_an_epoch_on_a_streamed_folder_resumes_exactly(photo_folder, tmp_path):
    # 43 photos at batch 4: 10 steps an epoch; killed after step 6 of epoch 1.
    common = ["--dataset", photo_folder, *PHOTO_RUN, "--batch-size", "4", "--epochs", "2",
              "--deterministic", "--checkpoint-every", "3"]
    reference = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "ref")
    assert reference.returncode == 0, reference.stderr
    assert kill_after_resume_saves(tmp_path / "killed", 2, *common) == -9
    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 6 of epoch 1" in resumed.stdout
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras"), strict=True):
        np.testing.assert_array_equal(a, b)


# A worker of a two-worker run that logs every file it decodes for training.
LOGGING_WORKER = """
import os, sys
from tfresnet.data.folders import ImageFiles
training = ImageFiles.decode_training
def logged(self, indices, seed, epoch):
    with open(os.environ["DECODED_OUT"], "a") as log:
        log.writelines(f"{epoch} {self.paths[i]}\\n" for i in indices)
    return training(self, indices, seed, epoch)
ImageFiles.decode_training = logged
from tfresnet.errors import run_cli
from tfresnet.cli.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_workers_each_read_their_own_share_of_the_files(photo_folder, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    args = ["--dataset", photo_folder, *PHOTO_RUN, "--epochs", "1", "--val-size", "0",
            "--output-dir", tmp_path, "--name", "two"]
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp_path),
               "DECODED_OUT": str(tmp_path / f"decoded{index}.txt"),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen([sys.executable, "-c", LOGGING_WORKER,
                                         *map(str, args)], env=env, cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    try:
        for process in workers:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-3000:]
    finally:
        for process in workers:
            process.kill()
    # Epoch 0's files per worker (an iterator Keras opens before training may have read
    # some of them once more; later epochs may have been prefetched).
    first, second = ({line for line in (tmp_path / f"decoded{i}.txt").read_text().splitlines()
                      if line.startswith("0 ")} for i in range(2))
    # 48 images, batch 8: 6 steps of 4 images per worker, disjoint, together all 48.
    assert len(first) == len(second) == 24
    assert not first & second
    assert len(first | second) == 48


def test_transfer_defaults_to_the_backbones_input_size(tmp_path):
    from tfresnet.config import TrainConfig
    from tfresnet.models import TransferNet
    from tfresnet.training.plan import input_size

    scratch = TrainConfig(model="resnet18_imagenet", transfer="scratch")
    assert input_size(scratch) == 224 and input_size(TrainConfig()) is None
    source = TransferNet("resnet18", 3, image_size=48, width=0.0625)
    source(np.zeros((1, 48, 48, 3), np.float32))
    source.save(tmp_path / "pretrained.keras")
    config = TrainConfig(model="resnet18_imagenet", transfer="finetune", width=0.0625,
                         weights=str(tmp_path / "pretrained.keras"))
    assert input_size(config) == 48  # the size the backbone was trained at
    assert input_size(TrainConfig(**{**config.to_dict(), "image_size": 96})) == 96


def test_photos_take_the_random_crop_only_when_the_spec_has_one(tmp_path):
    from tfresnet.data.folders import training_images

    write_photos(tmp_path / "set", 2, size=(60, 80))
    files = load_dataset(str(tmp_path / "set"), val_size=0, image_size=(32, 32)).x_train
    for spec, cropped in (("standard", True), ("shift_flip", True), ("flip", False),
                          ("none", False)):
        assert training_images(spec, files).view.random_crop is cropped
    image = np.zeros((4, 32, 32, 3), np.uint8)  # arrays pass unchanged
    assert training_images("standard", image) is image


def test_two_classes_show_no_top5_and_a_folder_without_test_split_says_where_figures_are_from(
        tmp_path, capsys):
    from tfresnet.cli.train import main as train_main
    from tfresnet.runs.run_folder import read_history

    write_photos(tmp_path / "pets" / "train", 24)
    run = ["--dataset", str(tmp_path / "pets"), *PHOTO_RUN, "--epochs", "1",
           "--output-dir", str(tmp_path), "--name", "run"]
    assert train_main(run) == 0
    out = capsys.readouterr().out
    assert "no test split: validation accuracy" in out and "{}" not in out
    assert ("note: 43 training images at batch 8 make 5 updates an epoch, 5 in all" in out
            and "fine-tune weights that know more instead" in out
            and "--weights saved_models/RUN" in out)
    # Five batches an epoch: batch norm remembers less, so epoch 1 fills its statistics.
    saved = load_model(tmp_path / "run")
    assert np.allclose([layer.momentum for layer in saved._flatten_layers()
                        if isinstance(layer, keras.layers.BatchNormalization)], 0.05 ** 0.2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not any("top5" in key for key in summary)
    assert not any("top5" in key for key in read_history(tmp_path / "run" / "history.csv")[0])
    assert evaluate_main([str(tmp_path / "run"), "--dataset", str(tmp_path / "pets")]) == 0
    assert "top-5" not in capsys.readouterr().out
