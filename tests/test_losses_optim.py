import math

import keras
import numpy as np
import pytest

from conftest import TINY, history, kill_after_first_epoch, run_cli, weights
from tfresnet.cli.train import main
from tfresnet.config import TrainConfig
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.losses import l2_penalty, l2_variables
from tfresnet.models import get_model
from tfresnet.optim.optimizers import base_learning_rate, current_learning_rate, make_optimizer
from tfresnet.optim.schedules import OneCycle, make_schedule
from tfresnet.runtime.session import configure
from tfresnet.training import run as run_module
from tfresnet.training.build import build_model
from tfresnet.training.network import shorten_batch_norm_memory
from tfresnet.training.pipelines import make_pipelines
from tfresnet.training.plan import batch_and_steps, build_settings, make_plan


def built(name="resnet18", stem="cifar"):
    model = get_model(name, 10, width=0.125, stem=stem)
    model(np.zeros((1, 32, 32, 3), "float32"))
    return model


def test_l2_all_minus_kernels_is_exactly_the_bn_and_bias_terms():
    model = built(stem="seed")  # the seed's model has conv biases too
    for v in model.trainable_variables:  # make every term non-trivial
        v.assign(np.random.default_rng(len(v.path)).normal(size=v.shape).astype("float32"))
    kernels = l2_penalty(l2_variables(model, "kernels"), 1e-4)
    everything = l2_penalty(l2_variables(model, "all"), 1e-4)
    others = [v for v in model.trainable_variables if not v.path.endswith("kernel")]
    assert {v.path.rsplit("/", 1)[1] for v in others} == {"gamma", "beta", "bias"}
    expected = 0.5 * 1e-4 * sum(float(np.sum(v.numpy().astype(np.float64) ** 2)) for v in others)
    assert float(everything) - float(kernels) == pytest.approx(expected, rel=1e-4)
    # And the kernel term is tf.nn.l2_loss-style: l2/2 * sum of squares.
    by_hand = 0.5 * 1e-4 * sum(float(np.sum(v.numpy().astype(np.float64) ** 2))
                               for v in model.trainable_variables if v.path.endswith("kernel"))
    assert float(kernels) == pytest.approx(by_hand, rel=1e-4)


def test_legacy_adam_decay_is_inverse_time_per_step():
    config = TrainConfig(optimizer="adam", lr=1e-3, schedule="inverse_time", decay=0.004)
    schedule = make_schedule(config.schedule_settings, config.lr, 100)
    for step in (0, 1, 10, 703, 10_000):
        assert float(schedule(step)) == pytest.approx(1e-3 / (1 + 0.004 * step), rel=1e-6)


def test_cosine_warmup_rises_linearly_then_decays_to_zero():
    config = TrainConfig(lr=0.1, epochs=10, warmup_epochs=2, schedule="cosine")
    schedule = make_schedule(config.schedule_settings, config.lr, 10)
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(10)) == pytest.approx(0.05, rel=1e-5)
    assert float(schedule(20)) == pytest.approx(0.1, rel=1e-5)
    assert float(schedule(60)) == pytest.approx(0.05, rel=1e-4)  # halfway through the decay
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def applied_rates(config, updates_per_epoch, steps):
    """The learning rate SGD without momentum applies at each of its first ``steps``
    updates (the change of a weight whose gradient is 1), and `current_learning_rate`'s
    reading of the last one from the optimizer's saved config."""
    optimizer = make_optimizer(config.optimizer_settings, config.schedule_settings, config.lr,
                               updates_per_epoch)
    weight = keras.Variable(0.0)
    rates = []
    for _ in range(steps):
        before = float(weight.numpy())
        optimizer.apply_gradients([(keras.ops.ones(()), weight)])
        rates.append(before - float(weight.numpy()))
    return rates, current_learning_rate(optimizer)


@pytest.mark.parametrize("schedule,settings,after", [
    ("step", {"milestones": [2], "gamma": 0.1}, lambda step: 0.1 if step < 20 else 0.01),
    ("constant", {}, lambda step: 0.1),
    ("inverse_time", {"decay": 0.01}, lambda step: 0.1 / (1 + 0.01 * step)),
])
def test_warmup_rises_linearly_to_any_schedule_then_follows_it(schedule, settings, after):
    """One epoch of 10 updates: the rate applied at update k is k/10 of the schedule's,
    then the schedule's own (its milestones at their epochs)."""
    config = TrainConfig(lr=0.1, schedule=schedule, warmup_epochs=1, epochs=5, momentum=0.0,
                         nesterov=False, **settings).validate()
    rates, last = applied_rates(config, 10, 25)
    expected = [min(1.0, step / 10) * after(step) for step in range(25)]
    assert rates == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert last == pytest.approx(expected[-1], rel=1e-5)


@pytest.mark.parametrize("schedule", ["step", "constant", "inverse_time", "onecycle"])
def test_only_cosine_warms_up_by_default(schedule):
    """0.4's runs of these schedules had no warm-up (its --warmup-epochs 2 acted on cosine
    alone); their default still has none, and cosine's keeps 2 epochs."""
    config = TrainConfig(lr=0.1, schedule=schedule, epochs=5, momentum=0.0, nesterov=False)
    rates, _ = applied_rates(config.validate(), 10, 1)
    assert rates[0] == pytest.approx(0.1 / 25 if schedule == "onecycle" else 0.1, rel=1e-5)
    cosine = make_schedule(TrainConfig(epochs=10).schedule_settings, 0.1, 10)
    assert [float(cosine(s)) for s in (0, 10)] == pytest.approx([0.0, 0.05], abs=1e-7)


@pytest.mark.parametrize("settings,message", [
    ({"schedule": "onecycle", "warmup_epochs": 1}, "--schedule onecycle has its own warm-up"),
    ({"milestones": [30, 60]}, "--milestones acts only with --schedule step, not cosine"),
    ({"schedule": "inverse_time", "gamma": 0.5}, "--gamma acts only with --schedule step"),
    ({"schedule": "step", "decay": 0.01}, "--decay acts only with --schedule inverse_time"),
    ({"optimizer": "adam", "momentum": 0.5, "nesterov": False},
     "--momentum and --nesterov act only with --optimizer sgd, not adam"),
    ({"l2": 0.0, "l2_on": "all"}, "--l2-on picks the variables --l2 decays, and --l2 is 0"),
])
def test_an_optimizer_setting_the_run_would_ignore_is_refused(settings, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**settings).validate()


def test_defaults_and_used_settings_are_never_refused():
    for schedule in ("constant", "inverse_time", "step", "cosine", "onecycle"):
        for optimizer in ("sgd", "adam", "adamw"):
            TrainConfig(schedule=schedule, optimizer=optimizer, l2=0.0).validate()
    TrainConfig(schedule="onecycle", warmup_epochs=0).validate()
    TrainConfig(schedule="step", milestones=[3], gamma=0.5, warmup_epochs=1).validate()
    TrainConfig(optimizer="sgd", momentum=0.5, nesterov=False).validate()


def test_step_schedule_multiplies_by_gamma_at_milestones():
    config = TrainConfig(schedule="step", milestones=[2, 4], gamma=0.1)
    schedule = make_schedule(config.schedule_settings, 0.1, 5)
    values = [float(schedule(s)) for s in (0, 9, 10, 19, 20)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-5)


def test_onecycle_shape_and_serialization():
    schedule = OneCycle(1.0, total_steps=100)
    assert float(schedule(0)) == pytest.approx(1 / 25)
    assert float(schedule(30)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(1e-4, rel=1e-3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(50)) == pytest.approx(float(schedule(50)))


def test_scale_lr_follows_the_samples_of_one_update():
    config = TrainConfig(lr=0.1, scale_lr=True, batch_size=512)
    assert base_learning_rate(config.optimizer_settings, 512, False) == pytest.approx(0.4)
    accumulated = TrainConfig(lr=0.1, scale_lr=True, grad_accum=4).optimizer_settings
    assert base_learning_rate(accumulated, 128, True) == pytest.approx(0.4)


def test_scale_lr_with_the_default_batch_uses_the_batch_that_ran(tmp_path):
    """No --batch-size: digits' 1,437 training images get the default 128 halved to 64 (an
    epoch needs 12 batches), so --scale-lr scales TINY's 0.05 by 64 / 128."""
    args = [a for a in TINY if a not in ("--batch-size", "64")]
    assert main([*args, "--model", "small_cnn", "--epochs", "1", "--scale-lr", "--schedule",
                 "constant", "--output-dir", str(tmp_path), "--name", "scaled"]) == 0
    row, = history(tmp_path / "scaled")
    assert float(row["lr"]) == pytest.approx(0.05 * 64 / 128)


def test_a_lowered_default_batch_scales_the_lr_and_an_explicit_batch_does_not():
    """Without --batch-size a small set's batch of 16 trains at --lr x 16 / 128 (+3.0 points
    on 246 real photos, experiments/README); a --batch-size 16 asked for keeps --lr."""
    settings = TrainConfig(lr=0.1).optimizer_settings
    assert base_learning_rate(settings, 16, batch_is_default=True) == pytest.approx(0.0125)
    assert base_learning_rate(settings, 128, batch_is_default=True) == pytest.approx(0.1)
    assert base_learning_rate(settings, 16, batch_is_default=False) == pytest.approx(0.1)


def batch_norm_momenta(model):
    return [layer.momentum for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


def test_short_epochs_shorten_batch_norm_memory_and_long_ones_keep_it():
    """15 batches an epoch: momentum 0.05 ** (1 / 15) = 0.82, so that at the first
    validation 95 % of the moving statistics come from data; 100 batches keep 0.9."""
    short, long = built(), built()
    shorten_batch_norm_memory(short, 15)
    shorten_batch_norm_memory(long, 100)
    assert np.allclose(batch_norm_momenta(short), 0.05 ** (1 / 15))
    assert np.allclose(batch_norm_momenta(long), 0.9)


def test_decoupled_weight_decay_skips_bn_and_biases():
    model = built(stem="seed")
    config = TrainConfig(optimizer="sgd", weight_decay=0.01)
    optimizer = make_optimizer(config.optimizer_settings, config.schedule_settings, 0.1, 10)
    optimizer.build(model.trainable_variables)
    decayed = {v.path.rsplit("/", 1)[1] for v in model.trainable_variables
               if optimizer._use_weight_decay(v)}
    assert decayed == {"kernel"}


def test_cross_entropy_matches_the_formula():
    from tfresnet.losses import cross_entropy

    logits = np.array([[2.0, 0.5, -3.0]], "float32")
    labels = np.array([[0.0, 1.0, 0.0]], "float32")
    log_p = logits[0] - math.log(sum(math.exp(v) for v in logits[0]))
    assert float(cross_entropy()(labels, logits)) == pytest.approx(-log_p[1], rel=1e-5)
    # Smoothing 0.3 over 3 classes: targets (0.1, 0.8, 0.1).
    smoothed = -(0.1 * log_p[0] + 0.8 * log_p[1] + 0.1 * log_p[2])
    assert float(cross_entropy(0.3)(labels, logits)) == pytest.approx(smoothed, rel=1e-5)


# SGD without momentum on the small CNN (no batch norm, no dropout): one update from the
# mean gradient of two batches equals one update on both batches at once.
PLAIN_SGD = [*TINY, "--model", "small_cnn", "--epochs", "2", "--augment", "none",
             "--momentum", "0", "--no-nesterov", "--lr", "0.05", "--val-size", "0"]


def test_accumulating_two_batches_equals_one_batch_twice_as_large(tmp_path):
    for name, flags in (("accumulated", ["--batch-size", "32", "--grad-accum", "2"]),
                        ("large", ["--batch-size", "64"])):
        assert main([*map(str, PLAIN_SGD), *flags, "--output-dir", str(tmp_path), "--name",
                     name]) == 0
    accumulated, large = (keras.saving.load_model(tmp_path / n / "last.keras")
                          for n in ("accumulated", "large"))
    # 1,437 digits: 22 batches of 64 per epoch, or 44 of 32 accumulated in pairs.
    assert int(accumulated.optimizer.iterations) == int(large.optimizer.iterations) == 44
    for a, b in zip(accumulated.get_weights(), large.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # The cosine schedule (with warm-up) is counted in updates: the logged LRs agree.
    rows = [history(tmp_path / n) for n in ("accumulated", "large")]
    assert [r["lr"] for r in rows[0]] == [r["lr"] for r in rows[1]]


@pytest.mark.slow
def test_ema_weights_are_the_running_average_and_resume_exactly(tmp_path):
    class Record(keras.callbacks.Callback):  # the trained weights after every update
        def on_train_batch_end(self, batch, logs=None):
            trained.append([v.numpy().copy() for v in self.model.trainable_variables])

    trained = []
    args = [*map(str, PLAIN_SGD), "--ema", "0.9", "--epochs", "1", "--output-dir",
            str(tmp_path), "--name", "ema"]
    make_callbacks = run_module.make_callbacks
    run_module.make_callbacks = lambda *a: [Record(), *make_callbacks(*a)]
    try:
        assert main(args) == 0
    finally:
        run_module.make_callbacks = make_callbacks
    average = trained[0]  # Keras starts the average at the first update's weights
    for weights_now in trained[1:]:
        average = [0.9 * a + 0.1 * w for a, w in zip(average, weights_now)]
    best = keras.saving.load_model(tmp_path / "ema" / "best.keras")
    for expected, got in zip(average, best.trainable_variables):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # last.keras holds the trained weights (Keras' in-place swap rounds them by an ulp).
    last = keras.saving.load_model(tmp_path / "ema" / "last.keras")
    np.testing.assert_allclose(last.trainable_variables[0].numpy(), trained[-1][0], rtol=1e-6,
                               atol=1e-8)

    common = [*PLAIN_SGD, "--ema", "0.9", "--epochs", "3", "--deterministic"]
    assert main([*map(str, common), "--output-dir", str(tmp_path), "--name", "ref"]) == 0
    assert kill_after_first_epoch(tmp_path / "killed", *common) < 3
    resumed = run_cli("tfresnet.train", *common, "--output-dir", tmp_path, "--name", "killed")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    for name in ("best.keras", "last.keras"):
        for a, b in zip(weights(tmp_path / "ref" / name), weights(tmp_path / "killed" / name)):
            np.testing.assert_array_equal(a, b)


def test_clip_norm_bounds_every_update():
    data = load_dataset("digits")
    config = TrainConfig(model="small_cnn", width=0.0625, batch_size=64, lr=0.5, momentum=0.0,
                         nesterov=False, schedule="constant", augment="none", clip_norm=0.01,
                         epochs=1, strategy="one").validate()
    runtime = configure(config.runtime_settings, config.model, config.width)
    plan = make_plan(config, data, runtime, None)
    model = build_model(data, runtime, plan, **build_settings(config))
    before = [v.numpy() for v in model.trainable_variables]
    train, _ = make_pipelines(config.augment, data, runtime, plan)
    model.fit(train, steps_per_epoch=1, epochs=1, verbose=0)
    step = np.sqrt(sum(np.sum(np.square(v.numpy() - b))
                       for v, b in zip(model.trainable_variables, before)))
    assert 0.5 * 0.01 * 0.99 < step <= 0.5 * 0.01 * 1.0001  # lr x the clipped norm


def test_grad_accum_needs_whole_updates_per_epoch():
    data = load_dataset("digits", val_size=0)  # 1,437 images: 22 batches of 64
    assert batch_and_steps(TrainConfig(batch_size=64, grad_accum=4), data) == (64, 20)
    with pytest.raises(UserError, match="--grad-accum 30 needs that many batches"):
        batch_and_steps(TrainConfig(batch_size=64, grad_accum=30), data)
    with pytest.raises(UserError, match="--seed must be >= 0"):
        TrainConfig(seed=-1).validate()
