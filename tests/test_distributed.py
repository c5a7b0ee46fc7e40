"""tf.distribute: a CPU split into two logical devices stands in for two GPUs, and two
processes on 127.0.0.1 (TF_CONFIG, free ports) for two machines; which GPUs each process
gets, and XLA under several replicas."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import free_ports, wait_for
from tfresnet.cli.train import main
from tfresnet.errors import UserError
from tfresnet.runs.run_folder import read_history
from tfresnet.runtime import devices, precision
from tfresnet.runtime.cluster import _slurm_resolver, make_strategy
from tfresnet.runtime.devices import cluster_environment

# Splits the CPU into two logical devices before TensorFlow starts, then runs train's main.
TWO_DEVICES = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfresnet.errors import run_cli
from tfresnet.cli.train import main
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""

# Runs train's main as a worker would and, for the test, saves this worker's final weights
# to $WEIGHTS_OUT (the other workers' files are deliberately not kept).
WORKER = """
import os, sys, numpy as np
import tfresnet.training.run as run
from tfresnet.cli.train import main
fit = run._fit
def keep_weights(config, model, *args):
    recorder = fit(config, model, *args)
    np.savez(os.environ["WEIGHTS_OUT"], *[v.numpy() for v in model.weights])
    return recorder
run._fit = keep_weights
from tfresnet.errors import run_cli
sys.exit(run_cli("tfresnet.train", main, sys.argv[1:]))
"""

# small_cnn has no batch norm, whose per-replica statistics would legitimately differ.
ARGS = ["--dataset", "digits", "--model", "small_cnn", "--width", "0.5", "--batch-size", "64",
        "--epochs", "2", "--lr", "0.01", "--augment", "none", "--deterministic",
        "--no-visualize", "--no-tensorboard"]
# The training curve; validation figures of a few hundred digits amplify the float32
# reduction-order differences of several replicas more (a single image is 0.7 %).
CURVE = ("loss", "ce", "l2", "accuracy")


def start_workers(tmp_path, tag, args, other_args=None):
    """Two training processes forming one cluster on 127.0.0.1 (the second with
    ``other_args`` if given); returns them with the folder each one's weights and scratch
    files go to."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index, worker_args in enumerate((args, other_args or args)):
        home = tmp_path / f"{tag}-worker{index}"
        home.mkdir()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(home),
               "WEIGHTS_OUT": str(home / "weights.npz"),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        workers.append((subprocess.Popen([sys.executable, "-c", WORKER, *worker_args], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True), home))
    return workers


def finish(workers, timeout=300):
    """Waits for every worker; returns ``(returncode, stderr)`` of each."""
    results = []
    try:
        for process, _ in workers:
            _, err = process.communicate(timeout=timeout)
            results.append((process.returncode, err))
    finally:
        for process, _ in workers:
            process.kill()
    return results


def weights(home):
    with np.load(home / "weights.npz") as saved:
        return [saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))]


@pytest.fixture(scope="module")
def single_and_two_workers(tmp_path_factory):
    """The same run in one process and on two workers (uninterrupted)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    assert main([*ARGS, "--strategy", "one", "--output-dir", str(tmp_path), "--name",
                 "single"]) == 0
    workers = start_workers(tmp_path, "whole", [*ARGS, "--output-dir", str(tmp_path),
                                                "--name", "two"])
    for code, err in finish(workers):
        assert code == 0, err[-3000:]
    return tmp_path, workers


@pytest.mark.slow
def test_two_workers_train_the_single_process_model(single_and_two_workers):
    tmp_path, workers = single_and_two_workers
    first, second = (weights(home) for _, home in workers)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # every replica applies the same update
    one = read_history(tmp_path / "single" / "history.csv")
    two = read_history(tmp_path / "two" / "history.csv")
    assert [r["epoch"] for r in two] == [1, 2]
    for a, b in zip(one, two):  # the same global batches, summed in another order
        for key in CURVE:
            assert b[key] == pytest.approx(a[key], abs=1e-3), key


@pytest.mark.slow
def test_only_the_chief_writes(single_and_two_workers):
    tmp_path, workers = single_and_two_workers
    run = tmp_path / "two"
    assert {p.name for p in run.iterdir()} == {p.name for p in (tmp_path / "single").iterdir()}
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    for _, home in workers:  # the worker's scratch folder is gone
        assert {p.name for p in home.iterdir()} == {"weights.npz"}


@pytest.mark.slow
def test_a_killed_worker_stops_the_others_and_a_restart_resumes(single_and_two_workers):
    tmp_path, _ = single_and_two_workers
    args = [*ARGS, "--output-dir", str(tmp_path), "--name", "killed"]
    workers = start_workers(tmp_path, "first", args)
    try:
        wait_for(lambda: (tmp_path / "killed" / "last.keras").exists())
    finally:
        workers[1][0].send_signal(signal.SIGKILL)
    finish(workers[1:])
    [(code, err)] = finish(workers[:1], timeout=120)
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("tfresnet.train: error: lost contact with "
                                                    "another worker"), err[-2000:]
    assert "restart every worker" in err
    finished = len(read_history(tmp_path / "killed" / "history.csv"))
    assert finished == 1

    restarted = start_workers(tmp_path, "again", args)
    results = finish(restarted)
    for code, err in results:
        assert code == 0, err[-3000:]
    assert [r["epoch"] for r in read_history(tmp_path / "killed" / "history.csv")] == [1, 2]
    # --deterministic: the resumed run ends where the uninterrupted one did.
    uninterrupted = weights(tmp_path / "whole-worker0")
    for a, b in zip(uninterrupted, weights(tmp_path / "again-worker0")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_workers_with_different_settings_are_refused(tmp_path):
    args = [*ARGS, "--output-dir", str(tmp_path)]
    for code, err in finish(start_workers(tmp_path, "mixed", args, [*args, "--lr", "0.02"])):
        assert code == 2
        assert err.strip().splitlines()[-1] == (
            "tfresnet.train: error: the workers were started with different settings; start "
            "every worker with the same command and flags"), err[-2000:]
    assert not list(tmp_path.glob("small_cnn-*"))  # refused before writing


@pytest.mark.slow
def test_mirrored_over_two_devices_matches_one_device(single_and_two_workers):
    tmp_path, _ = single_and_two_workers
    result = subprocess.run([sys.executable, "-c", TWO_DEVICES, *ARGS, "--strategy", "mirrored",
                             "--output-dir", str(tmp_path), "--name", "mirrored"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one = read_history(tmp_path / "single" / "history.csv")
    mirrored = read_history(tmp_path / "mirrored" / "history.csv")
    assert len(one) == len(mirrored) == 2
    for a, b in zip(one, mirrored):
        for key in CURVE:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key


# Trains a tiny ResNet with --sync-bn for 3 steps on two logical devices, through the same
# assembly as train; prints how far the BN moving means moved from their initial zeros,
# and the largest gap between the replicas' moving means.
BN_GAP = TWO_DEVICES.split("from tfresnet.errors")[0] + """
import keras, numpy as np
from tfresnet.config import TrainConfig
from tfresnet.runtime.session import configure
from tfresnet.training.build import build_model
from tfresnet.training.pipelines import make_pipelines
from tfresnet.training.plan import build_settings, prepare_run
config = TrainConfig(dataset="digits", model="resnet18", width=0.0625, batch_size=64,
                     augment="none", strategy="mirrored", sync_bn=True)
config.validate()
runtime = configure(config.runtime_settings, config.model, config.width)
data, plan = prepare_run(config, runtime)
model = build_model(data, runtime, plan, **build_settings(config))
model.fit(make_pipelines(config.augment, data, runtime, plan)[0], steps_per_epoch=3,
          shuffle=False, verbose=0)
norms = [l for l in model.network._flatten_layers()
         if isinstance(l, keras.layers.BatchNormalization)]
replicas = [runtime.strategy.experimental_local_results(l.moving_mean.value) for l in norms]
print(max(float(np.max(np.abs(r[0]))) for r in replicas),
      max(float(np.max(np.abs(np.subtract(*r)))) for r in replicas))
"""


@pytest.mark.slow
def test_sync_bn_gives_every_replica_the_same_statistics():
    # Without --sync-bn the replicas' moving means differ by about 0.015 here (each sees its
    # own half batch; measured with this script and sync_bn=False).
    result = subprocess.run([sys.executable, "-c", BN_GAP], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    moved, gap = map(float, result.stdout.split()[-2:])
    assert moved > 1e-2
    assert gap == 0.0


@pytest.mark.parametrize("tf_config,message", [
    ("{not json", "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG is not valid"),
    ('{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
     "the cluster must map 'chief' and/or 'worker'"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
     '"task": {"type": "worker", "index": 2}}', "task 'worker' 2 is not in the cluster"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}',
     "task 'chief' 0 is not in the cluster"),
])
def test_a_bad_tf_config_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        main([*ARGS, "--output-dir", str(tmp_path), "--name", "bad"])
    assert not (tmp_path / "bad").exists()


def test_multiworker_without_a_cluster_or_with_an_untested_keras_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    with pytest.raises(UserError, match="needs TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(UserError, match=r"tested with Keras 3\.15 only.*this is Keras 3\.99"):
        make_strategy("multiworker")


def test_a_slurm_job_step_is_a_cluster_without_probing_gpus(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    for name, value in {"PROCID": "1", "STEP_NUM_TASKS": "4", "STEP_NODELIST": "node[1-2]",
                        "STEP_TASKS_PER_NODE": "2(x2)"}.items():
        monkeypatch.setenv(f"SLURM_{name}", value)
    monkeypatch.setenv("PATH", "")  # nvidia-smi cannot be found, and must not be needed
    assert cluster_environment() == "slurm"
    resolver = _slurm_resolver()
    assert resolver.cluster_spec().as_dict() == {
        "worker": ["node1:8888", "node1:8889", "node2:8888", "node2:8889"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}  # its task computes on the CPU
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    with pytest.raises(UserError, match=r"2 tasks on a node with 1 GPU.*--ntasks-per-node 1"):
        _slurm_resolver()


# Records CUDA_VISIBLE_DEVICES at TensorFlow's first GPU listing (when CUDA starts and
# reads it); prints the value CUDA saw at tfresnet's first look at the devices, and the
# value after a second split. That importing tfresnet leaves both alone:
# test_layout.py::test_importing_tfresnet_under_slurm_leaves_cuda_visible_devices_as_it_was.
FIRST_GPU_PROBE = """
import os, tensorflow as tf
seen, list_devices = [], tf.config.list_physical_devices
def recording(*args, **kwargs):
    seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    return list_devices(*args, **kwargs)
tf.config.list_physical_devices = recording
from tfresnet.runtime.devices import assign_slurm_gpus, gpus
gpus()
assign_slurm_gpus()
print(seen[0], os.environ["CUDA_VISIBLE_DEVICES"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("slurm,visible,tasks", [
    # One node, 2 tasks, 4 GPUs, no CUDA_VISIBLE_DEVICES from Slurm.
    ({"STEP_NUM_TASKS": "2", "STEP_NODELIST": "node1", "STEP_TASKS_PER_NODE": "2",
      "GPUS_ON_NODE": "4"}, None, {"0": "0,1", "1": "2,3"}),
    # 2 nodes x 2 tasks: the second node's, where Slurm lists the job's GPUs 4-7.
    ({"STEP_NUM_TASKS": "4", "STEP_NODELIST": "node[1-2]", "STEP_TASKS_PER_NODE": "2(x2)",
      "GPUS_ON_NODE": "4", "NODEID": "1"}, "4,5,6,7", {"2": "4,5", "3": "6,7"}),
])
def test_slurm_tasks_of_a_node_split_its_gpus_before_cuda_starts(slurm, visible, tasks):
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")
           and key not in ("TF_CONFIG", "CUDA_VISIBLE_DEVICES")}
    env.update({f"SLURM_{key}": value for key, value in slurm.items()})
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    for local_id, (proc_id, share) in enumerate(tasks.items()):
        result = subprocess.run([sys.executable, "-c", FIRST_GPU_PROBE], capture_output=True,
                                env={**env, "SLURM_PROCID": proc_id,
                                     "SLURM_LOCALID": str(local_id)}, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        # the first look split, a second changes nothing
        assert result.stdout.split() == [share, share]


# Configures a run of --strategy mirrored --jit auto on the two logical devices.
MIRRORED_JIT = TWO_DEVICES.split("from tfresnet.errors")[0] + """
from tfresnet.config import TrainConfig
from tfresnet.runtime.session import configure
run = configure(TrainConfig(strategy="mirrored", jit="auto").runtime_settings)
print(run.strategy.num_replicas_in_sync, run.jit)
"""


@pytest.mark.slow
def test_xla_is_off_under_several_replicas_and_jit_on_is_refused(tmp_path):
    auto = subprocess.run([sys.executable, "-c", MIRRORED_JIT], capture_output=True,
                          text=True, timeout=300)
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert auto.stdout.split()[-2:] == ["2", "False"]
    refused = subprocess.run([sys.executable, "-c", TWO_DEVICES, *ARGS, "--strategy", "mirrored",
                              "--jit", "on", "--output-dir", str(tmp_path), "--name", "xla"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "tfresnet.train: error: --jit on: Keras cannot compile a step of 2 replicas with XLA "
        "(keras-team/keras#19005); use --jit auto or --jit off"), refused.stderr[-2000:]
    assert not (tmp_path / "xla").exists()


def test_jit_auto_is_on_with_one_gpu_replica_only(monkeypatch):
    monkeypatch.setattr(devices, "gpus", lambda: ["a GPU"])
    assert precision.resolve_jit("auto", 1, False) is True
    assert precision.resolve_jit("auto", 2, False) is False
    assert precision.resolve_jit("off", 1, False) is False
    with pytest.raises(UserError, match="use --jit auto or --jit off"):
        precision.resolve_jit("on", 2, False)


def test_nvidia_gpus_that_tensorflow_cannot_see_are_one_warning(tmp_path, monkeypatch, capsys):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    monkeypatch.setattr(devices, "NVIDIA_DEVICES", (str(tmp_path / "nvidia[0-9]*"),))
    monkeypatch.setattr(devices, "gpus", lambda: [])  # TensorFlow without CUDA
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.visible_gpu_ids() == ["0", "1"]
    devices.warn_if_gpus_unused()
    assert capsys.readouterr().err == (
        "warning: this machine has 2 NVIDIA GPU(s) but this TensorFlow sees none, so "
        'training runs in float32 on the CPU; pip install "tensorflow[and-cuda]" (pip '
        'install -e ".[gpu]" in a checkout)\n')
    for listed, ids in (("2,3", ["2", "3"]), ("1,-1,0", ["1"]), ("-1", []), ("", [])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        assert devices.visible_gpu_ids() == ids
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose
    devices.warn_if_gpus_unused()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(devices, "gpus", lambda: ["a GPU"])  # TensorFlow with CUDA
    devices.warn_if_gpus_unused()
    monkeypatch.setattr(devices, "NVIDIA_DEVICES", (str(tmp_path / "none*"),))  # no GPU
    monkeypatch.setattr(devices, "gpus", lambda: [])
    devices.warn_if_gpus_unused()
    assert capsys.readouterr().err == ""
