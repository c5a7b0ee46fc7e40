"""The configuration every GPU user runs -- mixed float16 with loss scaling, XLA,
augmentation inside the compiled step, 16 steps per execution -- run end to end on CPU
through the commands' main functions, since no GPU is lent to this project. Also mixed
bfloat16 (the default on A100/H100). A two-stage transfer trial under float16 is in
test_transfer.py, MirroredStrategy with several steps per execution in test_distributed.py."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

# Two logical CPU devices stand in for two GPUs (tests/test_distributed.py).
from test_distributed import TWO_DEVICES

from conftest import TINY, history, kill_after_first_epoch, run_cli, weights
from tfresnet.cli import bench, evaluate, export, predict, train, tune, visualize
from tfresnet.runs.run_folder import read_history
from tfresnet.runtime import cpu, devices, precision

# Steps per execution stay automatic: with XLA, the largest divisor of the epoch up to 16.
GPU_DEFAULTS = ["--precision", "mixed_float16", "--jit", "on", "--augment-on", "device"]


@pytest.fixture(autouse=True)
def float32_afterwards():
    """The commands set Keras' global precision policy; later tests expect float32."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_gpu_defaults_kill_resume_and_every_command_on_the_result(tmp_path, capsys):
    # 1,437 digits at batch 12: 119 steps per epoch, run 7 per execution (no validation
    # split: it would only add a compilation per process). A run of the
    # small CNN takes a third of ResNet-18's time here; the ResNet under these defaults (batch
    # norm in float16) is the tuner trial below and test_transfer.py's float16 trial.
    # No --deterministic: Keras turns XLA off under op determinism. XLA on CPU computes
    # the same run twice all the same (on a GPU its atomic reductions would not).
    common = [*TINY, *GPU_DEFAULTS, "--model", "small_cnn", "--epochs", "3", "--batch-size",
              "12", "--val-size", "0"]
    # Both runs in fresh processes: state other tests left in this one must not differ.
    reference = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "ref")
    assert reference.returncode == 0, reference.stderr
    assert "mixed_float16 on a CPU" in reference.stderr  # the one-line warning
    assert ("mixed_float16 | XLA on | batch 12 x 119 steps, 7 per execution | augmentation "
            "in the compiled step") in reference.stdout  # the start-up line

    done = kill_after_first_epoch(tmp_path / "killed", *common)
    assert done < 3, "the kill should land before the end"
    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    rows, ref_rows = history(tmp_path / "killed"), history(tmp_path / "ref")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for ref_row, row in zip(ref_rows, rows):
        assert float(row["loss"]) == pytest.approx(float(ref_row["loss"]), rel=1e-4)
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # The float16 machinery is what ran and what was saved: the loss-scaled optimizer with
    # its state, and float32 logits (a loaded model computes in the loader's policy).
    run_dir = tmp_path / "killed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["precision"], summary["jit"]) == ("mixed_float16", True)
    resumable = keras.saving.load_model(run_dir / "last.keras")
    assert isinstance(resumable.optimizer, keras.optimizers.LossScaleOptimizer)
    model = keras.saving.load_model(run_dir / "best.keras")
    assert not model.compiled  # the deployable model: no optimizer state
    assert model.network.fc.dtype_policy.compute_dtype == "float32"
    capsys.readouterr()
    assert evaluate.main([str(run_dir)]) == 0
    top1 = f"top-1 {100 * summary['test_accuracy']:.2f}%"
    assert top1 in capsys.readouterr().out  # the same model as the run's summary
    assert visualize.main([str(run_dir), "--out", str(tmp_path / "vis.png")]) == 0
    assert (tmp_path / "vis.png").stat().st_size > 0
    image = tmp_path / "digit.png"
    keras.utils.save_img(image, np.full((8, 8, 3), 200, "uint8"))
    assert predict.main([str(run_dir), str(image), "--json", str(tmp_path / "p.json")]) == 0
    assert "digit.png" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())


@pytest.mark.slow
def test_gpu_defaults_tuner_trial_and_bench(tmp_path, capsys):
    assert tune.main([*map(str, TINY), *GPU_DEFAULTS, "--epochs-per-trial", "1",
                      "--max-trials", "1", "--output-dir", str(tmp_path)]) == 0
    assert "1 trials; best" in capsys.readouterr().out
    record = tmp_path / "bench.jsonl"
    assert bench.main(["--train", "--model", "resnet18", "--width", "0.0625", "--batch-size",
                       "16", "--steps", "2", "--precision", "mixed_float16", "--jit", "on",
                       "--json", str(record)]) == 0
    line = json.loads(record.read_text().splitlines()[0])
    assert line["precision"] == "mixed_float16" and line["images_per_second"] > 0


def simulate_device(monkeypatch, cpu_flags=(), capability=None, onednn=None, switch=None):
    """A CPU with ``cpu_flags`` (Linux's /proc/cpuinfo names), or one GPU of compute
    ``capability``; ``onednn`` sets TF_ENABLE_ONEDNN_OPTS, ``switch``
    TFRESNET_CPU_BFLOAT16."""
    monkeypatch.delenv("TFRESNET_CPU_BFLOAT16")  # conftest's switch, off for the suite
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma", *cpu_flags})
    monkeypatch.setattr(devices, "gpus", lambda: ["GPU:0"] if capability else [])
    monkeypatch.setattr(precision.tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability})
    for name, value in (("TF_ENABLE_ONEDNN_OPTS", onednn), ("TFRESNET_CPU_BFLOAT16", switch)):
        if value is not None:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize("device, resolved", [
    ({}, "float32"),                                       # AVX2 only
    ({"cpu_flags": ["avx512_bf16"], "width": 0.125}, "float32"),  # too narrow to gain
    ({"cpu_flags": ["avx512_bf16"], "model": "small_cnn"}, "float32"),  # not measured
    ({"cpu_flags": ["avx512_bf16"], "model": "resnet50_imagenet"}, "mixed_bfloat16"),
    ({"cpu_flags": ["avx512f", "avx512_bf16"]}, "mixed_bfloat16"),  # Zen 4, Cooper Lake
    ({"cpu_flags": ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]}, "mixed_bfloat16"),
    ({"cpu_flags": ["amx_bf16"], "onednn": "0"}, "float32"),  # emulated without oneDNN
    ({"cpu_flags": ["avx512_bf16"], "onednn": "1"}, "mixed_bfloat16"),
    ({"cpu_flags": ["avx512_bf16"], "switch": "0"}, "float32"),  # TFRESNET_CPU_BFLOAT16=0
    ({"capability": (8, 0)}, "mixed_bfloat16"), ({"capability": (7, 5)}, "mixed_float16"),
    ({"capability": (6, 1)}, "float32"),
])
def test_precision_auto_resolves_for_the_device(monkeypatch, device, resolved):
    device = dict(device)
    network = {"model": device.pop("model", "resnet18"), "width": device.pop("width", 1.0)}
    simulate_device(monkeypatch, **device)
    assert precision.resolve_precision("auto", **network) == resolved
    assert precision.resolve_precision("float32", **network) == "float32"  # turned off


def test_cpu_flags_reads_linux_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    assert cpu.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # ARM: not read
    assert cpu.cpu_flags(cpuinfo) == set()
    assert cpu.cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize("environ, flags, system, loaded, value, reason", [
    ({}, {"avx2", "fma"}, "Linux", False, "1", "tfresnet's default"),  # AVX2: TF leaves it off
    ({}, {"avx2", "fma", "avx512f", "avx512_vnni"}, "Linux", False, "1", "TensorFlow's default"),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, {"avx2", "fma"}, "Linux", False, None, "=0"),  # the user's
    ({}, {"avx2", "fma"}, "Linux", True, None, "imported before tfresnet"),  # too late to set
    ({}, {"sse4_2"}, "Linux", False, None, "without AVX2"),
    ({}, set(), "Darwin", False, None, "this platform"),
])
def test_onednn_is_turned_on_before_tensorflow_loads_on_x86_cpus(environ, flags, system, loaded,
                                                                 value, reason):
    said, chosen = cpu.decide_onednn(environ, flags, system, "x86_64", loaded)
    assert chosen == value and reason in said


def test_importing_tfresnet_turns_onednn_on_unless_the_user_chose(tmp_path):
    probe = ("import os, tfresnet; from tensorflow.python.util import _pywrap_util_port as p; "
             "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), p.IsMklEnabled())")
    x86 = {"avx2", "fma"} <= cpu.cpu_flags()
    for user, expected in ((None, "1 True" if x86 else None), ("0", "0 False")):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if user is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = user
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        if expected:
            assert done.stdout.split() == expected.split()


@pytest.mark.parametrize("flags, resolved", [((), "float32"),
                                             (("avx512_bf16",), "mixed_bfloat16")])
def test_train_with_the_default_precision_follows_the_cpu(tmp_path, monkeypatch, capsys,
                                                         flags, resolved):
    simulate_device(monkeypatch, cpu_flags=flags)
    args = [*TINY, "--width", "0.25", "--epochs", "1", "--val-size", "0", "--name", "auto",
            "--output-dir", tmp_path]
    assert train.main([str(a) for a in args]) == 0
    assert f"| {resolved} |" in capsys.readouterr().out  # the start-up line
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["precision"] == resolved and summary["config"]["precision"] == "auto"


@pytest.mark.slow
def test_mixed_bfloat16_trains(tmp_path):
    args = [*TINY, "--precision", "mixed_bfloat16", "--epochs", "2", "--val-size", "0",
            "--name", "bf16", "--output-dir", tmp_path]
    assert train.main([str(a) for a in args]) == 0
    summary = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert summary["precision"] == "mixed_bfloat16"
    losses = [float(row["loss"]) for row in history(tmp_path / "bf16")]
    assert np.isfinite(losses).all() and losses[1] < losses[0]  # it learns
    # Exported in the same session, its policy still mixed_bfloat16 (TFLite takes none).
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert export.main([str(tmp_path / "bf16"), "--format", "tflite"]) == 0
    entry = json.loads((tmp_path / "bf16" / "export" / "export.json").read_text())
    assert entry["model.tflite"]["top1_agreement"] > 0.99


@pytest.mark.slow
def test_two_devices_with_the_gpu_defaults_train_and_refuse_what_keras_cannot_run(tmp_path):
    """What ``--strategy auto`` and ``--jit auto`` resolve to on a machine with two GPUs
    (MirroredStrategy, XLA off, one step per execution), with mixed bfloat16 and mixup
    in the step; several steps per execution are refused in one line."""
    args = [*map(str, TINY), "--model", "small_cnn", "--epochs", "2", "--strategy",
            "mirrored", "--precision", "mixed_bfloat16", "--augment", "flip,mixup",
            "--augment-on", "device", "--output-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, *args, "--name", "two"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("2 replicas on 1 worker(s) | mixed_bfloat16 | XLA off | batch 64 (32 per replica) x 20 "
            "steps, 1 per execution | augmentation in the compiled step") in result.stdout
    rows = read_history(tmp_path / "two" / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["loss"] < rows[0]["loss"]
    refused = subprocess.run([sys.executable, "-c", TWO_DEVICES, *args, "--name", "four",
                              "--steps-per-execution", "4"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "tfresnet.train: error: --steps-per-execution 4 needs one device"), refused.stderr
    assert not (tmp_path / "four").exists()
