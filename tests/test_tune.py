import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import free_ports, history, run_cli, wait_for
from tfresnet.cli.train import main as train_main
from tfresnet.cli.tune import main as tune_main
from tfresnet.tuning.launch import worker_environments
from tfresnet.tuning.lr_range import steepest_descent
from tfresnet.tuning.results import read_trial_stats
from tfresnet.tuning.search import SEARCH_SPACE

SEARCH = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "64",
          "--epochs-per-trial", "1", "--max-trials", "3"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_random_search_writes_results_and_train_consumes_them(tmp_path):
    assert tune_main([*SEARCH, "--max-trials", "2", "--output-dir", str(tmp_path),
                      "--name", "s"]) == 0
    out = tmp_path / "tune" / "s"
    trials = rows(out / "trials.csv")
    assert len(trials) == 2
    assert all(1e-4 <= float(t["lr"]) <= 1 for t in trials)
    best = max(trials, key=lambda t: float(t["best_val_accuracy"]))
    hparams = json.loads((out / "best_hparams.json").read_text())
    assert hparams["lr"] == pytest.approx(float(best["lr"]))
    assert hparams["model"] == "resnet18"
    assert (out / "lr_search.png").stat().st_size > 0

    run = ["--dataset", "digits", "--width", "0.0625", "--epochs", "1", "--no-visualize",
           "--no-tensorboard", "--output-dir", str(tmp_path), "--name", "from-tune",
           "--hparams", str(out / "best_hparams.json")]
    assert train_main(run) == 0
    saved = json.loads((tmp_path / "from-tune" / "config.json").read_text())
    assert saved["lr"] == pytest.approx(hparams["lr"])


@pytest.mark.slow
def test_every_trial_trains_in_the_runs_precision(tmp_path):
    """keras-tuner clears Keras' session, the global dtype policy with it, before each
    trial's build: each trial sets the run's policy again."""
    assert tune_main([*SEARCH, "--max-trials", "2", "--precision", "mixed_bfloat16",
                      "--output-dir", str(tmp_path), "--name", "bf16"]) == 0
    stats = read_trial_stats(tmp_path / "tune" / "bf16")
    assert len(stats) == 2
    for trial in stats.values():
        assert trial["dtype_policy"] == "mixed_bfloat16"
        assert trial["compile_seconds"] > 0 and len(trial["history"]) == 1


@pytest.mark.slow
def test_a_trial_trains_exactly_as_train_does_with_its_values(tmp_path, monkeypatch):
    """The second trial (after one trial and a cleared session) against a `train` run of
    its learning rate: the same dtype policy and, epoch by epoch, bit-equal figures. The
    same ops run in the same order from the same seed on the same CPU, and TensorFlow's
    CPU kernels are deterministic for a given graph and thread count, so any difference
    is a difference in what was run."""
    from tfresnet.training import run

    settings = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "64",
                "--precision", "mixed_bfloat16", "--output-dir", str(tmp_path)]
    assert tune_main([*settings, "--max-trials", "2", "--epochs-per-trial", "2",
                      "--name", "twin"]) == 0
    out = tmp_path / "tune" / "twin"
    second = rows(out / "trials.csv")[1]
    trial = read_trial_stats(out)[second["trial"]]

    models = []
    monkeypatch.setattr(run, "build_model",
                        lambda *a, _build=run.build_model, **k: models.append(_build(*a, **k))
                        or models[-1])
    assert train_main([*settings, "--epochs", "2", "--lr", second["lr"], "--no-visualize",
                       "--no-tensorboard", "--name", "twin-train"]) == 0
    assert models[0].dtype_policy.name == trial["dtype_policy"] == "mixed_bfloat16"
    trained = history(tmp_path / "twin-train")
    assert len(trained) == len(trial["history"]) == 2
    for row, logged in zip(trained, trial["history"]):
        figures = set(logged) - {"epoch"}
        assert figures >= {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert {k: float(row[k]) for k in figures} == {k: logged[k] for k in figures}


@pytest.mark.slow
def test_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    args = [*SEARCH, "--model", "small_cnn", "--output-dir", str(tmp_path), "--name", "k"]
    out = tmp_path / "tune" / "k"
    process = subprocess.Popen([sys.executable, "-m", "tfresnet.tune", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: read_trial_stats(out))
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = read_trial_stats(out)
    assert len(first) < 3, "the kill should land before the search finished"

    resumed = run_cli("tfresnet.tune", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(out / "trials.csv")) == 3
    final = read_trial_stats(out)
    for trial_id, value in first.items():  # finished trials were not run again
        assert final[trial_id] == value


def start_search(args, tuner_id, port):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_TUNER_ID": tuner_id,
           "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-m", "tfresnet.tune", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_chief_and_two_workers_share_one_search_and_survive_a_killed_worker(tmp_path):
    args = [*SEARCH, "--model", "small_cnn", "--max-trials", "4", "--output-dir",
            str(tmp_path), "--name", "p"]
    out = tmp_path / "tune" / "p"
    [port] = free_ports(1)
    chief = start_search(args, "chief", port)
    workers = {name: start_search(args, name, port) for name in ("tuner0", "tuner1")}
    processes = [chief, *workers.values()]
    try:
        # Kill tuner0 once it has finished a trial, then start it again.
        wait_for(lambda: any(s["tuner"] == "tuner0" for s in read_trial_stats(out).values()))
        workers["tuner0"].send_signal(signal.SIGKILL)
        workers["tuner0"].wait()
        restarted = start_search(args, "tuner0", port)
        processes.append(restarted)
        for process in (chief, workers["tuner1"], restarted):
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-2000:]
    finally:
        for process in processes:
            process.kill()
    trials = rows(out / "trials.csv")
    assert len(trials) == 4
    assert len({t["trial"] for t in trials}) == len({t["lr"] for t in trials}) == 4
    assert {t["tuner"] for t in trials} == {"tuner0", "tuner1"}
    assert json.loads((out / "best_hparams.json").read_text())["lr"] == pytest.approx(
        float(max(trials, key=lambda t: float(t["best_val_accuracy"]))["lr"]))


@pytest.mark.slow
def test_parallel_starts_a_chief_and_workers_itself(tmp_path):
    result = run_cli("tfresnet.tune", *SEARCH, "--model", "small_cnn", "--max-trials", "2",
                     "--parallel", "2",
                     "--output-dir", tmp_path, "--name", "two")
    assert result.returncode == 0, result.stderr[-2000:]
    trials = rows(tmp_path / "tune" / "two" / "trials.csv")
    assert len(trials) == 2 and {t["tuner"] for t in trials} <= {"tuner0", "tuner1"}


def test_parallel_workers_get_a_gpu_each_or_share_them_growing_their_memory():
    chief = {"CUDA_VISIBLE_DEVICES": ""}  # the oracle needs no GPU
    assert worker_environments(2, ["0", "1"]) == [
        chief, {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert worker_environments(1, ["2", "3"]) == [chief, {"CUDA_VISIBLE_DEVICES": "2"}]
    grow = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert worker_environments(3, ["0", "1"]) == [
        chief, {"CUDA_VISIBLE_DEVICES": "0", **grow}, {"CUDA_VISIBLE_DEVICES": "1", **grow},
        {"CUDA_VISIBLE_DEVICES": "0", **grow}]
    assert worker_environments(2, []) == [{}, {}, {}]


def test_every_searchable_name_is_a_train_config_field_and_its_hp_name():
    """``--search NAME`` passes the check against `SEARCH_SPACE` and each trial then sets
    ``NAME`` on its `TrainConfig`: a name that is no field fails every trial."""
    import dataclasses

    import keras_tuner as kt

    from tfresnet.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert sorted(set(SEARCH_SPACE) - fields) == []
    for name in SEARCH_SPACE:  # keras-tuner records the value under the field's own name
        hp = kt.HyperParameters()
        SEARCH_SPACE[name](hp)
        assert list(hp.values) == [name]


def in_declared_range(declaration, value):
    config = declaration["config"]
    if declaration["class_name"] == "Choice":
        return value in config["values"]
    assert declaration["class_name"] in ("Float", "Int"), declaration
    return config["min_value"] <= value <= config["max_value"]


@pytest.mark.slow
def test_one_trial_searches_every_searchable_name(tmp_path, monkeypatch):
    """A real trial over every name at once completes, records each in its declared range,
    builds the model from a config holding exactly those values and trains it with their
    augmentation, batch and learning rate."""
    from tfresnet.tuning import search

    built, trained = [], []
    settings, pipelines = search.build_settings, search.make_pipelines
    monkeypatch.setattr(search, "build_settings",
                        lambda config: built.append(config) or settings(config))
    monkeypatch.setattr(search, "make_pipelines",
                        lambda augment, data, runtime, plan, **k:
                        trained.append((augment, plan)) or pipelines(augment, data, runtime,
                                                                     plan, **k))
    # Base values outside the searched ranges: a trial that kept them would show.
    assert tune_main([*SEARCH, "--max-trials", "1", "--search", *SEARCH_SPACE,
                      "--l2", "0.05", "--weight-decay", "0.05", "--label-smoothing", "0.3",
                      "--output-dir", str(tmp_path), "--name", "all"]) == 0
    out = tmp_path / "tune" / "all"
    [trial_file] = (out / "keras_tuner").glob("trial_*/trial.json")
    trial = json.loads(trial_file.read_text())
    assert trial["status"] == "COMPLETED" and trial["score"] is not None
    values = trial["hyperparameters"]["values"]
    space = {d["config"]["name"]: d for d in trial["hyperparameters"]["space"]}
    assert set(values) == {"lr", *SEARCH_SPACE}
    base = json.loads((out / "search.json").read_text())["base"]
    for name in SEARCH_SPACE:
        assert in_declared_range(space[name], values[name]), (name, values[name])
        assert values[name] != base[name], f"{name}: the trial drew the base's value"
    # keras-tuner builds once with the defaults to declare the space; then the trial's.
    assert {name: getattr(built[-1], name) for name in values} == values
    [(augment, plan)] = trained
    assert (augment, plan.batch_size, plan.learning_rate) == (
        values["augment"], values["batch_size"], values["lr"])
    [row] = rows(out / "trials.csv")
    assert {name: row[name] for name in values} == {n: str(v) for n, v in values.items()}


def test_lr_range_test_suggests_a_rate_inside_the_sweep(tmp_path):
    args = ["--method", "lr-range", "--dataset", "digits", "--model", "small_cnn",
            "--width", "0.5", "--batch-size", "32", "--range-steps", "100", "--lr-min", "1e-4",
            "--lr-max", "10", "--output-dir", str(tmp_path), "--name", "r"]
    assert tune_main(args) == 0
    out = tmp_path / "tune" / "r"
    lr = json.loads((out / "best_hparams.json").read_text())["lr"]
    assert 1e-4 < lr < 10
    assert (out / "lr_range.png").stat().st_size > 0
    assert len(rows(out / "lr_range.csv")) >= 20


def test_lr_range_test_records_the_lr_each_update_applied_under_several_steps_per_execution(
        tmp_path, monkeypatch):
    """With 4 steps per execution (the GPU default is 16) every optimizer update is one
    point, logged with the LR that update applied."""
    from tfresnet.tuning import lr_range

    models = []
    build = lr_range.build_model
    monkeypatch.setattr(lr_range, "build_model",
                        lambda *a, **k: models.append(build(*a, **k)) or models[-1])
    low, high, steps = 1e-3, 1.0, 30
    assert tune_main(["--method", "lr-range", "--dataset", "digits", "--model", "small_cnn",
                      "--width", "0.25", "--batch-size", "32", "--steps-per-execution", "4",
                      "--range-steps", str(steps), "--lr-min", str(low), "--lr-max", str(high),
                      "--output-dir", str(tmp_path), "--name", "spe"]) == 0
    points = rows(tmp_path / "tune" / "spe" / "lr_range.csv")
    updates = int(models[-1].optimizer.iterations.numpy())
    assert [int(p["update"]) for p in points] == list(range(1, updates + 1))
    for point in points:  # the sweep's LR at the update's own step
        expected = low * (high / low) ** ((int(point["update"]) - 1) / (steps - 1))
        assert float(point["lr"]) == pytest.approx(expected, rel=1e-4)


def test_steepest_descent_finds_the_fastest_fall():
    import numpy as np

    rates = np.logspace(-4, 0, 200)
    losses = 3 - 2 / (1 + np.exp(-(np.log10(rates) + 2) * 4))  # falls fastest at 1e-2
    losses[-20:] += np.linspace(0, 5, 20)  # divergence after the minimum
    # The steepest fall is at 1e-2; the slope stays within 80 % of it up to 1.74e-2.
    assert 1.0e-2 < steepest_descent(rates, losses) < 2.0e-2


@pytest.mark.slow
def test_folder_of_another_search_space_is_refused(tmp_path):
    assert tune_main([*SEARCH, "--max-trials", "1", "--output-dir", str(tmp_path),
                      "--name", "x"]) == 0
    before = (tmp_path / "tune" / "x" / "trials.csv").read_text()
    from tfresnet.errors import UserError

    with pytest.raises(UserError, match="holds a search with another setup .*search"):
        tune_main([*SEARCH, "--max-trials", "1", "--output-dir", str(tmp_path), "--name", "x",
                   "--search", "optimizer"])
    assert (tmp_path / "tune" / "x" / "trials.csv").read_text() == before


def test_a_setting_some_trials_would_ignore_is_refused_before_the_search(tmp_path):
    from tfresnet.errors import UserError

    with pytest.raises(UserError, match="--search optimizer tries adam, where --momentum"):
        tune_main([*SEARCH, "--search", "optimizer", "--momentum", "0.8", "--output-dir",
                   str(tmp_path), "--name", "x"])
    assert not (tmp_path / "tune").exists()


def test_trials_in_one_process_leave_no_step_graphs_behind():
    """Keras sums gradients over replicas even when there is one; TF's all_reduce then
    registers a custom gradient per traced step in its global registry, which keeps every
    trial's step graph alive (`tfresnet.keras_fixes.sum_gradients_first`)."""
    from tensorflow.python.framework import ops

    from tfresnet.config import TrainConfig
    from tfresnet.runtime.session import configure
    from tfresnet.training.build import build_model
    from tfresnet.training.pipelines import make_pipelines
    from tfresnet.training.plan import build_settings, prepare_run

    config = TrainConfig(dataset="digits", model="small_cnn", width=0.25, batch_size=32,
                         epochs=1, strategy="one").validate()
    runtime = configure(config.runtime_settings, config.model, config.width)
    data, plan = prepare_run(config, runtime)

    def trial():
        model = build_model(data, runtime, plan, **build_settings(config))
        model.fit(make_pipelines(config.augment, data, runtime, plan)[0], steps_per_epoch=1,
                  verbose=0)

    trial()
    before = len(ops._gradient_registry.list())
    trial()
    trial()
    assert len(ops._gradient_registry.list()) == before
