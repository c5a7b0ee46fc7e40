"""The configuration every GPU user runs -- mixed float16 with loss scaling, XLA,
augmentation inside the compiled step, 16 steps per execution -- run end to end on CPU
through the command lines, since no GPU is lent to this project. Also mixed bfloat16 (the
default on A100/H100) and a two-stage transfer run under float16."""

import json
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import TINY, history, run_cli, wait_for, weights

GPU_DEFAULTS = ["--precision", "mixed_float16", "--jit", "on", "--augment-on", "device",
                "--steps-per-execution", "16"]


@pytest.mark.slow
def test_gpu_defaults_kill_resume_and_every_command_on_the_result(tmp_path):
    common = [*TINY, *GPU_DEFAULTS, "--epochs", "3", "--batch-size", "32", "--deterministic",
              "--output-dir", tmp_path]
    reference = run_cli("tfresnet.train", *common, "--name", "ref")
    assert reference.returncode == 0, reference.stderr
    assert "mixed_float16 on a CPU" in reference.stderr  # the one-line warning

    process = subprocess.Popen([sys.executable, "-m", "tfresnet.train", *map(str, common),
                                "--name", "killed"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "killed" / "last.keras").exists())  # epoch 2 has begun
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(history(tmp_path / "killed")) < 3
    resumed = run_cli("tfresnet.train", *common, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    rows, ref_rows = history(tmp_path / "killed"), history(tmp_path / "ref")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for ref_row, row in zip(ref_rows, rows):  # XLA on CPU is deterministic: equal runs
        assert float(row["loss"]) == pytest.approx(float(ref_row["loss"]), rel=1e-5)
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The float16 machinery is what ran and what was saved: the loss-scaled optimizer with
    # its state, and float32 logits (a loaded model computes in the loader's policy).
    run_dir = tmp_path / "killed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["precision"], summary["jit"]) == ("mixed_float16", True)
    model = keras.saving.load_model(run_dir / "best.keras")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.network.fc.dtype_policy.compute_dtype == "float32"
    evaluate = run_cli("tfresnet.evaluate", run_dir)
    assert evaluate.returncode == 0, evaluate.stderr
    assert f"top-1 {100 * summary['test_accuracy']:.2f}%" in evaluate.stdout  # same model
    visualize = run_cli("tfresnet.visualize", run_dir, "--out", tmp_path / "vis.png")
    assert visualize.returncode == 0 and (tmp_path / "vis.png").stat().st_size > 0
    image = tmp_path / "digit.png"
    keras.utils.save_img(image, np.full((8, 8, 3), 200, "uint8"))
    predict = run_cli("tfresnet.predict", run_dir, image)
    assert predict.returncode == 0, predict.stderr
    assert "digit.png" in predict.stdout


@pytest.mark.slow
def test_gpu_defaults_tuner_trial_and_bench(tmp_path):
    tune = run_cli("tfresnet.tune", *TINY, *GPU_DEFAULTS, "--epochs-per-trial", "1",
                   "--max-trials", "1", "--output-dir", tmp_path)
    assert tune.returncode == 0, tune.stderr
    assert "1 trials; best" in tune.stdout
    bench = run_cli("tfresnet.bench", "--train", "--model", "resnet18", "--width", "0.0625",
                    "--batch-size", "16", "--steps", "2", "--precision", "mixed_float16",
                    "--jit", "on", "--json", tmp_path / "bench.jsonl")
    assert bench.returncode == 0, bench.stderr
    record = json.loads((tmp_path / "bench.jsonl").read_text().splitlines()[0])
    assert record["precision"] == "mixed_float16" and record["images_per_second"] > 0


def test_mixed_bfloat16_trains(tmp_path):
    args = [*TINY, "--precision", "mixed_bfloat16", "--epochs", "2", "--name", "bf16",
            "--output-dir", tmp_path]
    result = run_cli("tfresnet.train", *args)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["precision"] == "mixed_bfloat16"
    losses = [float(row["loss"]) for row in history(tmp_path / "bf16")]
    assert np.isfinite(losses).all() and losses[1] < losses[0]  # it learns
