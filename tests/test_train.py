import json
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import (
    TINY,
    history,
    kill_after_first_epoch,
    kill_after_resume_saves,
    run_cli,
    weights,
)
from tfresnet.cli.train import build_parser, main
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.errors import run_cli as wrap_cli
from tfresnet.evaluation.pictures import curves_figure
from tfresnet.models import Classifier, ImagePreprocessor, get_model
from tfresnet.runs.probabilities import predict_probabilities
from tfresnet.runtime.provenance import source_commit
from tfresnet.training import run as run_module

RUN_FILES = {"best.keras", "last.keras", "history.csv", "curves.png", "summary.json",
             "config.json", "class_indices.json", "tensorboard"}


@pytest.mark.slow
def test_run_writes_every_file_and_best_keras_reproduces_test_accuracy(tmp_path):
    args = [*TINY, "--epochs", "2", "--name", "r", "--output-dir", tmp_path, "--tensorboard"]
    assert main([str(a) for a in args]) == 0
    run_dir = tmp_path / "r"
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"lr", "loss", "ce", "l2", "accuracy", "top5", "val_accuracy",
                            "val_top5", "seconds"}
    for row in rows:  # loss = ce + l2, logged separately
        assert float(row["loss"]) == pytest.approx(float(row["ce"]) + float(row["l2"]), rel=1e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["epochs"] == 2 and summary["parameters"] > 0
    assert summary["best_epoch"] in (1, 2)

    model = keras.saving.load_model(run_dir / "best.keras")  # plain Keras, safe mode
    assert not model.compiled  # the deployable model; last.keras has loss and optimizer
    assert keras.saving.load_model(run_dir / "last.keras").compiled
    data = load_dataset("digits")
    predicted = np.argmax(model.predict(data.x_test, verbose=0), axis=1)
    assert np.mean(predicted == data.y_test) == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert model.class_names == [str(d) for d in range(10)]


def test_learning_rate_is_logged_per_epoch_from_the_schedule(tmp_path):
    args = [*TINY, "--model", "small_cnn", "--epochs", "2", "--name", "lr",  # any network
            "--output-dir", tmp_path, "--optimizer", "adam", "--lr", "0.001",
            "--schedule", "inverse_time", "--decay", "0.004", "--val-size", "0"]
    assert main([str(a) for a in args]) == 0
    rows = history(tmp_path / "lr")
    steps = (1797 - 360) // 64  # digits: 1,437 training images, full batches
    for row in rows:  # the seed's legacy Adam decay, evaluated at the epoch's last step
        last_step = int(row["epoch"]) * steps - 1
        assert float(row["lr"]) == pytest.approx(0.001 / (1 + 0.004 * last_step), rel=1e-5)
    assert "val_accuracy" not in rows[0] or rows[0]["val_accuracy"] == ""
    # No validation split: the last epoch is the best.
    assert weights(tmp_path / "lr" / "best.keras")[0].tolist() == \
        weights(tmp_path / "lr" / "last.keras")[0].tolist()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    common = [*TINY, "--epochs", "3", "--batch-size", "32", "--deterministic",
              "--schedule", "cosine"]
    reference = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "ref")
    assert reference.returncode == 0, reference.stderr

    done = kill_after_first_epoch(tmp_path / "killed", *common)
    assert done < 3, "the kill should land before the run finished"
    keras.saving.load_model(tmp_path / "killed" / "last.keras")  # readable after the kill

    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    ref_rows, rows = history(tmp_path / "ref"), history(tmp_path / "killed")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for ref_row, row in zip(ref_rows, rows):
        assert float(row["lr"]) == pytest.approx(float(ref_row["lr"]), rel=1e-6)
        assert float(row["loss"]) == pytest.approx(float(ref_row["loss"]), rel=1e-5)
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kill_inside_an_epoch_resumes_from_its_step_with_the_uninterrupted_weights(tmp_path):
    # 1,293 digits at batch 16: 80 steps an epoch; the kill lands after step 20 of epoch 1.
    common = [*TINY, "--model", "small_cnn", "--epochs", "2", "--batch-size", "16",
              "--deterministic", "--checkpoint-every", "10"]
    reference = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "ref")
    assert reference.returncode == 0, reference.stderr
    assert kill_after_resume_saves(tmp_path / "killed", 2, *common) == -9
    assert not (tmp_path / "killed" / "last.keras").exists()  # no epoch had ended
    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 20 of epoch 1" in resumed.stdout
    assert not (tmp_path / "killed" / "resume.keras").exists()
    ref_rows, rows = history(tmp_path / "ref"), history(tmp_path / "killed")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "val_loss", "lr"):  # epoch 1's training averages cover steps 21-80
        assert float(rows[1][key]) == pytest.approx(float(ref_rows[1][key]), rel=1e-6), key
    for a, b in zip(weights(tmp_path / "ref" / "last.keras"),
                    weights(tmp_path / "killed" / "last.keras"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_every_takes_steps_or_a_duration():
    from tfresnet.config import checkpoint_interval

    assert checkpoint_interval("500") == (500, None)
    assert checkpoint_interval("90s") == (None, 90)
    assert checkpoint_interval("10min") == (None, 600)
    assert checkpoint_interval("1h") == (None, 3600)
    for bad in ("0", "ten", "5 days", "-3"):
        with pytest.raises(UserError, match="--checkpoint-every takes a number of steps"):
            checkpoint_interval(bad)


def test_nan_loss_stops_cleanly_and_keeps_best_keras(tmp_path, monkeypatch, capsys):
    class PoisonWeights(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.network.fc.kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    make_callbacks = run_module.make_callbacks
    monkeypatch.setattr(run_module, "make_callbacks",
                        lambda *a: make_callbacks(*a) + [PoisonWeights()])
    args = [*TINY, "--epochs", "3", "--name", "nan", "--output-dir", tmp_path]
    assert wrap_cli("tfresnet.train", main, [str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert "NaN or infinite in epoch 2" in err and len(err.splitlines()) == 1
    rows = history(tmp_path / "nan")
    assert [r["epoch"] for r in rows] == ["1"]
    model = keras.saving.load_model(tmp_path / "nan" / "best.keras")
    assert np.all(np.isfinite(model.network.fc.kernel.numpy()))


def test_config_precedence_and_unknown_keys(tmp_path):
    from tfresnet.config import resolve_config

    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"lr": 0.5, "epochs": 7, "optimizer": "adam"}))
    hparams = tmp_path / "h.json"
    hparams.write_text(json.dumps({"lr": 0.02, "model": "resnet18"}))
    parser = build_parser()
    config = resolve_config(parser.parse_args(["--config", str(config_file), "--hparams",
                                               str(hparams), "--epochs", "3"]))
    assert (config.lr, config.epochs, config.optimizer) == (0.02, 3, "adam")
    config_file.write_text(json.dumps({"stem": "seed", "augment": "seed"}))  # names of 0.1
    config = resolve_config(parser.parse_args(["--config", str(config_file)]))
    assert (config.stem, config.augment) == ("biased_valid", "shift_flip")
    config_file.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(UserError, match="unknown setting\\(s\\) learning_rate"):
        resolve_config(parser.parse_args(["--config", str(config_file)]))
    with pytest.raises(UserError, match="was tuned for model 'resnet18', not 'resnet34'"):
        resolve_config(parser.parse_args(["--hparams", str(hparams), "--model", "resnet34"]))


def test_run_folder_of_other_settings_is_refused(tmp_path):
    base = [*TINY, "--model", "small_cnn", "--epochs", "1", "--output-dir", str(tmp_path),
            "--name", "x"]
    assert main(base) == 0
    before = (tmp_path / "x" / "best.keras").read_bytes()
    with pytest.raises(UserError, match="holds a run with other settings .*model"):
        main([*base, "--model", "resnet18"])
    assert (tmp_path / "x" / "best.keras").read_bytes() == before


def test_predict_probabilities_matches_model_predict():
    clf = Classifier(get_model("small_cnn", 10, width=0.25),
                     ImagePreprocessor.from_mean_std((32, 32), [120] * 3, [60] * 3),
                     [str(i) for i in range(10)])
    x = np.random.default_rng(0).integers(0, 255, (37, 32, 32, 3), np.uint8)
    expected = keras.ops.softmax(clf.predict(x, verbose=0)).numpy()
    np.testing.assert_allclose(predict_probabilities(clf, x, batch_size=16), expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mistake,message", [
    (["--augment", "bogus"], "unknown augmentation 'bogus'"),
    (["--schedule", "step", "--milestones", "0", "5"], "--milestones must be positive"),
    (["--model", "resnet50_imagenet", "--transfer", "frozen", "--weights", "missing.h5"],
     "--weights file missing.h5 does not exist"),
    (["--dataset", "no/such/folder"], "unknown data set"),
    (["--augment", "randaugment", "--augment-on", "device", "--jit", "on"],
     "cannot run inside an XLA-compiled step"),
    # Settings the run would ignore (their refusals are tested where they belong).
    (["--crop-scale", "0.5", "1", "--preprocess", "photo"],
     "--preprocess and --crop-scale act only on image folders, and digits is not one"),
    (["--dataset", "no/such/folder", "--preprocess", "small", "--eval-crop", "0.9"],
     "--eval-crop acts only on the photo view, which --preprocess small does not use"),
    (["--dataset", "no/such/folder", "--data-dir", "pickles"],
     "--data-dir locates a registered data set's files"),
    (["--schedule", "onecycle", "--warmup-epochs", "1"], "--schedule onecycle has its own"),
    (["--model", "resnet18_imagenet", "--transfer", "scratch", "--zero-init-residual"],
     "--zero-init-residual does not apply to --transfer scratch"),
])
def test_a_refused_command_leaves_nothing_and_the_corrected_one_runs(tmp_path, mistake,
                                                                     message):
    base = [*TINY, "--epochs", "1", "--output-dir", str(tmp_path), "--name", "typo"]
    with pytest.raises(UserError, match=message):
        main([*base, *mistake])
    assert not (tmp_path / "typo").exists()
    if mistake[0] == "--augment":  # the corrected command, same --name, runs
        assert main(base) == 0


def test_augmentation_goes_into_the_xla_step_only_when_xla_can_compile_it():
    from types import SimpleNamespace

    from tfresnet.config import TrainConfig
    from tfresnet.training.plan import augments_in_step

    xla, eager = SimpleNamespace(jit=True), SimpleNamespace(jit=False)
    assert augments_in_step(TrainConfig(augment="strong"), xla)
    assert not augments_in_step(TrainConfig(augment="strong"), eager)
    assert not augments_in_step(TrainConfig(augment="randaugment,flip"), xla)  # host instead
    assert augments_in_step(TrainConfig(augment="flip", augment_on="device"), eager)


def test_a_run_without_a_terminal_prints_step_lines(tmp_path):
    # 1,293 training digits at batch 64: 20 steps per epoch, a line every 6 steps.
    result = run_cli("tfresnet.train", *TINY, "--model", "small_cnn", "--epochs", "1",
                     "--log-every", "6", "--output-dir", tmp_path, "--name", "steps")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch 1 step")]
    assert [line.split()[3] for line in lines] == ["6/20", "12/20", "18/20"]
    for line in lines:
        assert all(field in line for field in ("loss", "acc", "lr", "img/s", "ETA"))
    assert any(line.startswith("epoch 1/1  loss") for line in result.stdout.splitlines())


def test_several_steps_per_execution_leave_the_curve_unchanged(tmp_path, capsys):
    """20 steps per epoch: 4 per execution divides the epoch and runs in Keras' own loop,
    with the one-step run's curve; 3 would run past each epoch's end and is refused before
    anything is written."""
    args = [*TINY, "--model", "small_cnn", "--epochs", "2", "--output-dir", str(tmp_path)]
    assert main([*args, "--name", "one"]) == 0
    with pytest.raises(UserError, match="--steps-per-execution 3 does not divide the epoch's "
                       "20 steps .*a divisor: 1, 2, 4, 5, 10, 20"):
        main([*args, "--name", "three", "--steps-per-execution", "3"])
    assert not (tmp_path / "three").exists()
    capsys.readouterr()
    assert main([*args, "--name", "several", "--steps-per-execution", "4"]) == 0
    assert "4 per execution" in capsys.readouterr().out  # the start-up line
    assert json.loads((tmp_path / "several" / "summary.json").read_text())[
        "steps_per_execution"] == 4
    for a, b in zip(history(tmp_path / "one"), history(tmp_path / "several"), strict=True):
        for key in ("loss", "accuracy", "val_loss", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), key


def test_steps_per_execution_auto_divides_the_epoch_and_is_one_under_several_replicas():
    from types import SimpleNamespace

    from tfresnet.config import TrainConfig
    from tfresnet.training.plan import steps_per_execution

    def runtime(jit, replicas=1):
        return SimpleNamespace(jit=jit, strategy=SimpleNamespace(num_replicas_in_sync=replicas))

    auto = TrainConfig()
    # CIFAR's 45,000 training images at batch 128: 351 = 27 x 13 steps.
    assert steps_per_execution(auto, runtime(True), 351) == 13
    assert steps_per_execution(auto, runtime(True), 352) == 16
    assert steps_per_execution(auto, runtime(True), 89) == 1  # a prime epoch
    assert steps_per_execution(auto, runtime(False), 352) == 1
    assert steps_per_execution(auto, runtime(True, replicas=2), 352) == 1
    assert steps_per_execution(TrainConfig(steps_per_execution=11), runtime(False), 352) == 11


def test_best_keras_is_the_deployable_model_and_last_keras_resumes(tmp_path):
    import zipfile

    import h5py

    args = [*TINY, "--model", "small_cnn", "--epochs", "1", "--output-dir", str(tmp_path),
            "--name", "run"]
    assert main(args) == 0
    run_dir = tmp_path / "run"

    def contents(name):
        with zipfile.ZipFile(run_dir / name) as archive:
            config = json.loads(archive.read("config.json"))
            with archive.open("model.weights.h5") as f, h5py.File(f) as weights:
                return config, set(weights)

    best_config, best_groups = contents("best.keras")
    last_config, last_groups = contents("last.keras")
    assert "optimizer" in last_groups and last_config.get("compile_config")
    assert "optimizer" not in best_groups and not best_config.get("compile_config")
    # The same weights, in this process and in a fresh one (evaluate reads best.keras).
    for a, b in zip(weights(run_dir / "best.keras"), weights(run_dir / "last.keras")):
        np.testing.assert_array_equal(a, b)
    result = run_cli("tfresnet.evaluate", run_dir)
    assert result.returncode == 0 and "top-1" in result.stdout, result.stderr[-2000:]
    assert main([*args[:-4], "--epochs", "2", "--output-dir", str(tmp_path), "--name",
                 "run"]) == 0  # resumes from last.keras
    assert [row["epoch"] for row in history(run_dir)] == ["1", "2"]


def test_background_checkpoints_hold_the_state_of_their_epoch_end(tmp_path):
    """The files are written while the next epoch trains: they must hold the state of the
    moment they were asked for, optimizer included."""
    from tfresnet.config import TrainConfig
    from tfresnet.runtime.session import configure
    from tfresnet.training.build import build_model
    from tfresnet.training.checkpoint import BackgroundSaver
    from tfresnet.training.pipelines import make_pipelines
    from tfresnet.training.plan import build_settings, prepare_run

    config = TrainConfig(dataset="digits", model="small_cnn", width=0.25, batch_size=64,
                         augment="none").validate()
    runtime = configure(config.runtime_settings, config.model, config.width)
    data, plan = prepare_run(config, runtime)
    model = build_model(data, runtime, plan, **build_settings(config))
    model.fit(make_pipelines(config.augment, data, runtime, plan)[0], steps_per_epoch=2,
              verbose=0)
    saver = BackgroundSaver(model)
    state = [v.numpy().copy() for v in model.variables]
    iterations = int(model.optimizer.iterations.numpy())
    saver.save(tmp_path / "last.keras", optimizer=True)
    saver.save(tmp_path / "best.keras", optimizer=False)
    for variable in model.trainable_variables:  # the next epoch goes on training
        variable.assign(variable + 1.0)
    model.optimizer.iterations.assign_add(7)
    saver.wait()
    last = keras.saving.load_model(tmp_path / "last.keras")
    assert int(last.optimizer.iterations.numpy()) == iterations == 2
    for path in ("last.keras", "best.keras"):
        saved = keras.saving.load_model(tmp_path / path).variables
        for expected, got in zip(state, saved, strict=True):
            np.testing.assert_array_equal(expected, got.numpy())


@pytest.mark.slow
def test_train_and_tune_decide_once_through_one_plan(tmp_path, monkeypatch):
    """Assembly's decisions (input size, batch and steps, augmentation placement, steps per
    execution) are made only inside `make_plan`, once per run or trial; summary.json holds
    the plan, and a tuner trial of the same settings follows the same one."""
    from tfresnet.cli.tune import main as tune_main
    from tfresnet.training import pipelines, plan
    from tfresnet.tuning import run as tuning_run
    from tfresnet.tuning import search

    inside, calls, plans = [], [], []
    decisions = ("input_size", "batch_and_steps", "augments_in_step", "steps_per_execution")
    make_plan = plan.make_plan

    def planning(*args):
        inside.append(True)
        try:
            plans.append(make_plan(*args))
        finally:
            inside.pop()
        return plans[-1]

    def spy(name):
        original = getattr(plan, name)
        return lambda *args: calls.append((name, bool(inside))) or original(*args)

    spies = {**{name: spy(name) for name in decisions}, "make_plan": planning}
    for module in (plan, pipelines, tuning_run, search):  # wherever a name was imported
        for name, spy in spies.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, spy)
    settings = ["--dataset", "digits", "--model", "small_cnn", "--width", "0.25",
                "--batch-size", "64", "--no-tensorboard", "--no-visualize", "--output-dir",
                str(tmp_path)]
    assert main([*settings, "--epochs", "1", "--name", "run"]) == 0
    # input_size is decided for the data before the plan, once; the rest inside it.
    assert calls == [("input_size", False), *[(n, True) for n in decisions[1:]]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["plan"] == plans[0].to_dict()
    assert (summary["plan"]["batch_size"], summary["plan"]["steps_per_epoch"]) == (64, 20)

    calls.clear()
    assert tune_main([*settings, "--epochs-per-trial", "1", "--max-trials", "1"]) == 0
    assert all(within for name, within in calls if name != "input_size")
    assert [name for name, _ in calls].count("input_size") == 1
    # The search's base, then keras-tuner's build declaring the space and the trial's:
    # each plans once.
    assert [name for name, _ in calls].count("batch_and_steps") == len(plans) - 1 >= 3
    trial = {k: v for k, v in plans[-1].to_dict().items() if k != "learning_rate"}
    assert trial == {k: v for k, v in summary["plan"].items() if k != "learning_rate"}


def test_a_run_folder_of_version_0_3_resumes_after_its_last_epoch(tmp_path, capsys):
    """A one-epoch run written by tfresnet 0.3.0 (digits, small_cnn x0.0625, batch 64)
    continues with the same command and --epochs 2."""
    import shutil

    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v0.3_small_cnn", tmp_path / "old")
    old = history(tmp_path / "old")
    assert main(["--dataset", "digits", "--model", "small_cnn", "--width", "0.0625",
                 "--batch-size", "64", "--no-tensorboard", "--no-visualize", "--epochs", "2",
                 "--output-dir", str(tmp_path), "--name", "old"]) == 0
    assert "after epoch 1" in capsys.readouterr().out
    rows = history(tmp_path / "old")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == old[0]


def test_a_step_schedule_run_of_version_0_4_resumes_without_warmup(tmp_path, capsys):
    """0.4 saved --warmup-epochs 2.0, its default, which the step schedule ignored: such a
    run folder resumes with the same command and still has no warm-up; a run given that
    warm-up today resumes with it."""
    args = [*TINY, "--model", "small_cnn", "--schedule", "step", "--val-size", "0",
            "--output-dir", str(tmp_path)]
    assert main([*args, "--name", "old", "--epochs", "1"]) == 0
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["warmup_epochs"] is None
    config_path.write_text(json.dumps({**config, "warmup_epochs": 2.0}))  # as 0.4 wrote it
    assert main([*args, "--name", "old", "--epochs", "2"]) == 0
    assert "after epoch 1" in capsys.readouterr().out
    assert [float(r["lr"]) for r in history(tmp_path / "old")] == pytest.approx([0.05, 0.05])

    warm = [*args, "--name", "warm", "--warmup-epochs", "2"]
    assert main([*warm, "--epochs", "1"]) == 0  # a warm-up longer than the run: cut to it
    assert main([*warm, "--epochs", "3"]) == 0
    assert "after epoch 1" in capsys.readouterr().out
    steps = (1797 - 360) // 64  # digits: 1,437 training images, full batches
    rates = [float(r["lr"]) for r in history(tmp_path / "warm")]
    assert rates == pytest.approx([0.05, 0.05 * (2 * steps - 1) / (2 * steps), 0.05])


def test_summary_records_the_commit_of_the_checkout_it_runs_from(tmp_path):
    import subprocess

    import tfresnet

    root = Path(tfresnet.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("tfresnet does not run from a git checkout here")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    source_commit.cache_clear()  # read once per process: HEAD may have moved since
    assert main([*TINY, "--model", "small_cnn", "--epochs", "1", "--output-dir", str(tmp_path),
                 "--name", "commit"]) == 0
    summary = json.loads((tmp_path / "commit" / "summary.json").read_text())
    assert summary["versions"]["tfresnet_commit"].removesuffix("+dirty") == head


def test_the_learning_curves_of_a_short_run_label_whole_epochs_only():
    rows = [{"epoch": e, "loss": 2.0 / e, "accuracy": 0.3 * e, "val_loss": 2.2 / e,
             "val_accuracy": 0.25 * e} for e in (1, 2)]
    figure = curves_figure(rows, "two epochs")
    figure.canvas.draw()  # a Figure without pyplot draws on its own Agg canvas
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
