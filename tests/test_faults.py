"""Fault injection: kills (also in the middle of a checkpoint write), a full disk, damaged
model files, and a sweep of wrong inputs over every command line."""

import errno
import importlib
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import keras
import pytest

from conftest import TINY, run_cli, wait_for, write_cifar100
from tfresnet.cli.train import main as train_main
from tfresnet.data import load_dataset
from tfresnet.errors import run_cli as wrap_cli
from tfresnet.runs.run_folder import read_history

# Checkpoint safety does not depend on the network: the small CNN runs in half the time.
EPOCHS = 5
RUN = [*TINY, "--model", "small_cnn", "--batch-size", "32", "--epochs", str(EPOCHS)]

# Runs tfresnet.train with every model save slowed down after the temporary file is written,
# logging each save to argv[1], so a test can kill it in the middle of a checkpoint write.
SLOW_SAVE = """
import sys, time, keras
original, log_path = keras.Model.save, sys.argv[1]
def slow_save(self, path, *args, **kwargs):
    original(self, path, *args, **kwargs)
    with open(log_path, "a") as log:
        log.write(str(path) + "\\n")
    time.sleep(2)
keras.Model.save = slow_save
from tfresnet.cli.train import cli
sys.argv = sys.argv[:1] + sys.argv[2:]
cli()
"""


def start_training(tmp_path, name, slow_log=None):
    args = [*map(str, RUN), "--output-dir", str(tmp_path), "--name", name]
    if slow_log is None:
        command = [sys.executable, "-m", "tfresnet.train", *args]
    else:
        command = [sys.executable, "-c", SLOW_SAVE, str(slow_log), *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_survived(run_dir):
    """Both checkpoints load, and rerunning the same command finishes the run."""
    for name in ("best.keras", "last.keras"):
        keras.saving.load_model(run_dir / name)
    rerun = run_cli("tfresnet.train", *RUN, "--output-dir", run_dir.parent, "--name",
                    run_dir.name)
    assert rerun.returncode == 0, rerun.stderr
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == \
        list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_sigkill_at_a_random_point_leaves_loadable_checkpoints(tmp_path):
    # A random point within the run, whatever the machine's speed: after a random number
    # of finished epochs (at least one, at most all but two), plus a random fraction of a
    # second.
    draw = random.Random(0)
    epochs_done, delay = draw.randint(1, EPOCHS - 2), draw.uniform(0.0, 0.2)
    process = start_training(tmp_path, "kill")
    wait_for(lambda: len(read_history(tmp_path / "kill" / "history.csv")) >= epochs_done)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "kill" / "summary.json").exists(), "killed after the run finished"
    assert_survived(tmp_path / "kill")


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write(tmp_path):
    log = tmp_path / "saves.log"
    process = start_training(tmp_path, "slow", slow_log=log)
    # Epoch 1 writes best then last; kill while epoch 2's first temporary file is pending.
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    pending = log.read_text().splitlines()[2]
    assert ".tmp.keras" in pending
    assert_survived(tmp_path / "slow")


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                 capsys):
    original = keras.Model.save
    saves = []

    def save_until_full(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) > 2:  # epoch 1's best and last fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_until_full)
    args = [*map(str, RUN), "--output-dir", str(tmp_path), "--name", "full"]
    assert wrap_cli("tfresnet.train", train_main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0] and "previous version is intact" in err[0]
    monkeypatch.setattr(keras.Model, "save", original)
    run_dir = tmp_path / "full"
    model = keras.saving.load_model(run_dir / "last.keras")
    steps_per_epoch = len(load_dataset("digits").x_train) // 32
    assert int(model.optimizer.iterations.numpy()) == steps_per_epoch  # exactly epoch 1
    assert not list(run_dir.glob(".*.tmp*"))  # no temporary file left behind


def tiny_png_header(width, height):
    """A PNG whose header claims width x height (no pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run, plus damaged files to feed the commands."""
    root = tmp_path_factory.mktemp("sweep")
    assert train_main([*TINY, "--epochs", "1", "--output-dir", str(root), "--name", "ok"]) == 0
    best = (root / "ok" / "best.keras").read_bytes()
    (root / "truncated.keras").write_bytes(best[: len(best) // 2])
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(root / "foreign.keras")
    (root / "text.png").write_text("not an image")
    cv2.imwrite(str(root / "digit.png"), load_dataset("digits").x_test[0])
    (root / "bad.tflite").write_bytes(b"not a flatbuffer" * 64)
    (root / "bad.labels.txt").write_text("a\nb\n")
    (root / "huge.png").write_bytes(tiny_png_header(100_000, 100_000))
    (root / "empty").mkdir()
    (root / "bad.json").write_text("{not json")
    write_cifar100(root / "c100")
    return root


def sweep_cases(root):
    ok, t = root / "ok", root / "truncated.keras"
    D = ["--dataset", "digits"]  # noqa: N806  (never a download in tests)
    return [
        ("tfresnet.train", ["--dataset", "nowhere"], "unknown data set 'nowhere'"),
        ("tfresnet.train", [*D, "--batch-size", "x"], "invalid int value: 'x'"),
        ("tfresnet.train", [*D, "--epochs", "-3"], "--epochs must be positive"),
        ("tfresnet.train", [*D, "--config", root / "bad.json"], "is not valid JSON"),
        ("tfresnet.train", ["--dataset", root / "empty"], "has no class folders"),
        ("tfresnet.train", [*D, "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        ("tfresnet.train", [*D, "--colour", "red"], "unrecognized arguments: --colour red"),
        ("tfresnet.train", [*D, "--model", "resnet19"], "unknown model 'resnet19'"),
        ("tfresnet.train", [*D, "--config", root / "missing.json"], "does not exist"),
        ("tfresnet.train", [*D, "--augment", "blur"], "unknown augmentation 'blur'"),
        ("tfresnet.train", [*D, "--strategy", "multiworker"],
         "--strategy multiworker needs TF_CONFIG"),
        ("tfresnet.train", [*D, "--model", "vgg16", "--transfer", "frozen", "--weights",
                            root / "missing.h5"], "no pretrained variant of 'vgg16'"),
        ("tfresnet.tune", [*D, "--max-trials", "0"], "--max-trials and --epochs-per-trial"),
        ("tfresnet.tune", [*D, "--lr-min", "0"], "0 < --lr-min < --lr-max"),
        ("tfresnet.tune", [*D, "--lr-min", "1", "--lr-max", "0.1"], "0 < --lr-min < --lr-max"),
        ("tfresnet.tune", [*D, "--search", "momentum"], "unknown hyperparameter(s) momentum"),
        ("tfresnet.tune", [*D, "--tuner", "grid"], "invalid choice: 'grid'"),
        ("tfresnet.evaluate", [t], "not a Keras archive"),
        ("tfresnet.evaluate", [root / "foreign.keras"], "not a model trained by tfresnet"),
        ("tfresnet.evaluate", [ok, "--dataset", "cifar100", "--data-dir", root / "c100"],
         "cifar100 has 100 classes but the model predicts 10"),
        ("tfresnet.evaluate", [ok, "--tta", "rotate"], "invalid choice: 'rotate'"),
        ("tfresnet.predict", [ok, root / "text.png"], "not an image OpenCV can read"),
        ("tfresnet.predict", [ok, root / "huge.png"], "more than the 50,000,000 pixels"),
        ("tfresnet.predict", [ok, root / "empty"], "has no image files to predict"),
        ("tfresnet.predict", [ok, root / "missing.jpg"], "no such image file or folder"),
        ("tfresnet.predict", [t, root / "text.png"], "not a Keras archive"),
        ("tfresnet.predict", [root / "foreign.keras", root / "text.png"],
         "not a model trained by tfresnet"),
        ("tfresnet.predict", [ok, root / "text.png", "--top-k", "0"], "--top-k must be positive"),
        ("tfresnet.visualize", [root / "empty"], "no model file"),
        ("tfresnet.visualize", [ok, "--per-row", "0"], "--per-row must be positive"),
        ("tfresnet.visualize", [t], "not a Keras archive"),
        ("tfresnet.visualize", [ok, "--dataset", "cifar100", "--data-dir", root / "c100"],
         "has 100 classes but the model predicts 10"),
        ("tfresnet.baselines", ["knn", "--dataset", root / "missing"], "unknown data set"),
        ("tfresnet.baselines", ["svm"], "invalid choice: 'svm'"),
        ("tfresnet.baselines", ["knn", "--dataset", "digits", "--train-subset", "0"],
         "--train-subset must be positive"),
        ("tfresnet.bench", ["--model", "alexnet"], "unknown model 'alexnet'"),
        ("tfresnet.bench", ["--batch-size", "0"], "--batch-size must be positive"),
        ("tfresnet.bench", ["--steps", "-1"], "--steps must be positive"),
        ("tfresnet.compare", [root / "empty"], "has no summary.json"),
        ("tfresnet.export", [ok, "--format", "coreml"], "invalid choice: 'coreml'"),
        ("tfresnet.export", [root / "missing", "--format", "tflite"], "no model file"),
        ("tfresnet.export", [ok, "--format", "tflite", "--quantize", "int8", "--dataset",
                             root / "missing"], "int8 needs the training images"),
        ("tfresnet.export", [ok, "--format", "tflite", "--out", root / "text.png" / "m.tflite"],
         "cannot write"),
        ("tfresnet.export", [ok, "--format", "onnx", "--out", root / "m.tflite"],
         "must end in .onnx"),
        ("tfresnet.export", [ok, "--format", "onnx", "--quantize", "int8"],
         "--format onnx takes --quantize none"),
        ("tfresnet.predict", [root / "bad.tflite", root / "digit.png"],
         "is not a TFLite model"),
        ("tfresnet.explain", [ok, root / "text.png"], "not an image OpenCV can read"),
        ("tfresnet.explain", [root / "empty", root / "digit.png"], "no model file"),
        ("tfresnet.explain", [ok, root / "digit.png", "--class", "zebra"],
         "neither a class of the model"),
        ("tfresnet.explain", [ok, root / "digit.png", "--out", root / "text.png" / "cams"],
         "cannot write"),
    ]


def assert_one_line(where, returncode, stderr, message):
    assert returncode == 2, where
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"{where}: {stderr}"
    assert message in lines[0], f"{where}: {lines[0]}"


def test_every_cli_gives_one_line_for_wrong_input(trained, capsys, monkeypatch):
    # Through each command's main function, as its console script calls it; the test below
    # runs one case per command as a real process.
    monkeypatch.chdir(trained)
    for module, args, message in sweep_cases(trained):
        main = importlib.import_module(module.replace("tfresnet.", "tfresnet.cli.")).main
        returncode = wrap_cli(module, main, [str(a) for a in args])
        assert_one_line(f"{module} {' '.join(map(str, args))}", returncode,
                        capsys.readouterr().err, message)


@pytest.mark.slow
def test_every_command_line_prints_only_its_one_error_line(trained):
    """As processes: no native TensorFlow chatter, no traceback, just the one line."""
    cases = list({c[0]: c for c in reversed(sweep_cases(trained))}.values())  # first per CLI
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: run_cli(c[0], *c[1], cwd=trained), cases))
    assert len(results) == 10  # every command
    for (module, args, message), result in zip(cases, results):
        assert_one_line(f"{module} {' '.join(map(str, args))}", result.returncode,
                        result.stderr, message)


def test_resume_from_a_damaged_checkpoint_is_refused(trained, tmp_path):
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    for name in ("config.json", "history.csv"):
        (run_dir / name).write_bytes((trained / "ok" / name).read_bytes())
    (run_dir / "last.keras").write_bytes((trained / "truncated.keras").read_bytes())
    result = run_cli("tfresnet.train", *TINY, "--epochs", "1", "--output-dir", tmp_path,
                     "--name", "damaged")
    assert result.returncode == 2
    assert "cannot be resumed from" in result.stderr and "--fresh" in result.stderr
