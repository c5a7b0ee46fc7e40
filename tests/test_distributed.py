"""tf.distribute on one machine: a CPU split into two logical devices stands in for two GPUs."""

import subprocess
import sys

import pytest

from tfresnet.callbacks import read_history

# Splits the CPU into two logical devices before TensorFlow starts, then runs train's main.
TWO_DEVICES = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfresnet.errors import run_cli
from tfresnet.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""

# small_cnn has no batch norm, whose per-replica statistics would legitimately differ.
ARGS = ["--dataset", "digits", "--model", "small_cnn", "--width", "0.5", "--batch-size", "64",
        "--epochs", "2", "--lr", "0.01", "--augment", "none", "--deterministic",
        "--no-visualize", "--no-tensorboard"]


@pytest.mark.slow
def test_mirrored_on_two_devices_matches_one_device(tmp_path):
    for strategy in ("one", "mirrored"):
        result = subprocess.run([sys.executable, "-c", TWO_DEVICES, *ARGS, "--strategy",
                                 strategy, "--output-dir", str(tmp_path), "--name", strategy],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    one = read_history(tmp_path / "one" / "history.csv")
    mirrored = read_history(tmp_path / "mirrored" / "history.csv")
    assert len(one) == len(mirrored) == 2
    for a, b in zip(one, mirrored):
        # Same global batch, same data order: the curves agree to float32 reduction order.
        for key in ("loss", "ce", "l2", "accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key
