"""Shared fixtures: tiny CIFAR folders in the original pickle layout, real CIFAR-10 images
from ../shared when present, and a helper that runs a CLI the way a user does."""

import csv
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfresnet.tuning.launch import free_ports  # noqa: F401 (the tests' import of it)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# --precision auto stays float32 on this CPU, so that no result depends on whether the
# machine running the suite executes bfloat16 natively (CI's CPU model changes). The
# bfloat16 choice is simulated in test_gpu_defaults.py; mixed bfloat16 runs where asked.
os.environ["TFRESNET_CPU_BFLOAT16"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR10_JPG = SHARED / "data" / "cifar10-jpg.tar.gz"
CIFAR10_TOOL = SHARED / "tools" / "cifar10_from_jpg.py"


def _rows(images):
    # The original files store each image as 3 colour planes of 32x32, row-major.
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path, mapping):
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in mapping.items()}, f, protocol=2)


def make_images(count, num_classes, seed):
    """Learnable toy images: each class has its own colour, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    palette = rng.integers(30, 225, (num_classes, 3))
    images = palette[labels][:, None, None, :] + rng.integers(-30, 30, (count, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_cifar10(root, train=300, test=100, seed=0):
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = make_images(train + test, 10, seed)
    for i, part in enumerate(np.array_split(np.arange(train), 5), start=1):
        _dump(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "labels": y[part].tolist(),
                                           "data": _rows(x[part])})
    _dump(folder / "test_batch", {"labels": y[train:].tolist(), "data": _rows(x[train:])})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _dump(folder / "batches.meta", {"label_names": [n.encode() for n in names]})
    return {"x": x, "y": y, "names": names, "train": train}


def write_cifar100(root, train=400, test=100, seed=0):
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    x, fine = make_images(train + test, 100, seed)
    coarse = fine // 5  # any fixed fine -> coarse map will do
    for split, part in (("train", slice(0, train)), ("test", slice(train, None))):
        _dump(folder / split, {"fine_labels": fine[part].tolist(),
                               "coarse_labels": coarse[part].tolist(), "data": _rows(x[part])})
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            "coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return {"x": x, "fine": fine, "coarse": coarse, "train": train}


@pytest.fixture
def cifar10_dir(tmp_path):
    info = write_cifar10(tmp_path / "c10")
    return tmp_path / "c10", info


@pytest.fixture
def cifar100_dir(tmp_path):
    info = write_cifar100(tmp_path / "c100")
    return tmp_path / "c100", info


@pytest.fixture(scope="session")
def real_cifar10(tmp_path_factory):
    """The real CIFAR-10 images of ../shared, 50 per class, in the original layout."""
    if not (CIFAR10_JPG.exists() and CIFAR10_TOOL.exists()):
        pytest.skip("../shared/data/cifar10-jpg.tar.gz is not here")
    out = tmp_path_factory.mktemp("real")
    subprocess.run([sys.executable, str(CIFAR10_TOOL), str(out), "--train-per-class", "50",
                    "--test-per-class", "20"], check=True, capture_output=True)
    return out


def history(run_dir):
    """A run's history.csv as a list of row dicts."""
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def weights(path):
    """The weights of a saved model as NumPy arrays."""
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path).get_weights()]


def run_cli(module, *args, cwd=None, timeout=300):
    """Runs ``python -m module args`` in a fresh process, like a user."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def kill_after_first_epoch(run_dir, *args):
    """Starts ``python -m tfresnet.train args --output-dir/--name`` for ``run_dir`` and
    kills it (SIGKILL) once an epoch is saved: last.keras is the last file an epoch
    writes, so the next epoch has begun. Returns the epochs in its history."""
    command = [sys.executable, "-m", "tfresnet.train", *map(str, args), "--output-dir",
               str(run_dir.parent), "--name", run_dir.name]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "last.keras").exists())
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(history(run_dir))


# Runs train's main and SIGKILLs the process right after its N-th save of resume.keras
# (--checkpoint-every) is on disk: a kill -9 inside an epoch, at a known step.
KILL_AFTER_RESUME_SAVE = """
import os, signal, sys
from tfresnet.training import callbacks
save, saves = callbacks.BackgroundSaver.save, []
def save_then_die(self, path, optimizer):
    save(self, path, optimizer)
    saves.append(path.name == "resume.keras")
    if sum(saves) == int(os.environ["RESUME_SAVES"]):
        self.wait()
        os.kill(os.getpid(), signal.SIGKILL)
callbacks.BackgroundSaver.save = save_then_die
from tfresnet.errors import run_cli
from tfresnet.cli.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""


def kill_after_resume_saves(run_dir, saves, *args):
    """Runs train with ``args`` into ``run_dir`` and kills it (SIGKILL) once its
    ``saves``-th resume.keras is written; returns the exit status (-9)."""
    return subprocess.run([sys.executable, "-c", KILL_AFTER_RESUME_SAVE, *map(str, args),
                           "--output-dir", str(run_dir.parent), "--name", run_dir.name],
                          capture_output=True, timeout=300,
                          env={**os.environ, "RESUME_SAVES": str(saves),
                               "TF_CPP_MIN_LOG_LEVEL": "3"}).returncode


def wait_for(condition, timeout=300):
    """Polls ``condition`` until it holds: tests wait for a state, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.05)


# Tiny but real training settings shared by the training tests.
TINY = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "64", "--lr", "0.05",
        "--no-tensorboard", "--no-visualize"]
