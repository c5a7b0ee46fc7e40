"""Several replicas compute what one device computes: two logical CPU devices stand in for
two GPUs (the CPU is split before TensorFlow starts, so each check runs in a fresh
process). The references are one device on the same global gradient or the same global
batches (`tfresnet.keras_fixes` names the Keras behaviours each check covers)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY


def run_on_devices(count, body, *args, timeout=300):
    """Runs ``body`` (Python source) with the CPU split into ``count`` logical devices;
    returns the JSON object it prints last."""
    source = (
        "import json, sys, tensorflow as tf\n"
        'cpu = tf.config.list_physical_devices("CPU")[0]\n'
        "tf.config.set_logical_device_configuration(\n"
        f"    cpu, [tf.config.LogicalDeviceConfiguration()] * {count})\n" + body)
    done = subprocess.run([sys.executable, "-c", source, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Builds one mirrored and one single-device model of the same run exactly as `train`
# does (mixed float16: Keras wraps the optimizer in its LossScaleOptimizer), gives both
# the same weights, then applies hand-made gradients: replica r gets (r + 1) * g, whose sum
# 3 * g is what one device gets. With --clip-norm 1 the sum's norm (3) is clipped and
# each replica's part (1 and 2) would be clipped differently.
OPTIMIZER_CHECKS = """
import numpy as np
from tfresnet.config import TrainConfig
from tfresnet.runtime.session import Runtime, configure
from tfresnet.training.build import build_model
from tfresnet.training.plan import build_settings, prepare_run

config = TrainConfig(dataset="digits", model="resnet18", width=0.0625, batch_size=64,
                     precision="mixed_float16", strategy="mirrored", clip_norm=1.0,
                     optimizer="sgd", momentum=0.0, schedule="constant", lr=0.5,
                     epochs=1).validate()
runtime = configure(config.runtime_settings, config.model, config.width)
data, plan = prepare_run(config, runtime)
mirrored = build_model(data, runtime, plan, **build_settings(config))
one_device = Runtime(tf.distribute.get_strategy(), plan.precision, False, "cpu")
single = build_model(data, one_device, plan, **build_settings(config))
single.set_weights(mirrored.get_weights())
variables = mirrored.trainable_variables
rng = np.random.default_rng(0)
units = [rng.standard_normal(v.shape).astype("float32") for v in variables]
norm = np.sqrt(sum((u ** 2).sum() for u in units))
units = [u / norm for u in units]  # a global norm of 1


def scaled(model):
    return float(model.optimizer.dynamic_scale.numpy())


@tf.function
def apply_per_replica(overflow):
    def step():
        context = tf.distribute.get_replica_context()
        factor = tf.cast(context.replica_id_in_sync_group + 1, tf.float32)
        grads = [tf.constant(u) * factor * mirrored.optimizer.dynamic_scale for u in units]
        # An overflow on replica 1 only.
        bad = tf.logical_and(overflow, tf.equal(context.replica_id_in_sync_group, 1))
        grads[0] = tf.where(bad, tf.fill(tf.shape(grads[0]), np.inf), grads[0])
        mirrored.optimizer.apply(grads, variables)
    runtime.strategy.run(step)


before = [v.numpy() for v in variables]
scale = scaled(mirrored)
apply_per_replica(tf.constant(True))
skipped = all(np.array_equal(a, v.numpy()) for a, v in zip(before, variables))
halved = scaled(mirrored) / scale
steps_after_overflow = int(mirrored.optimizer.iterations.numpy())

apply_per_replica(tf.constant(False))
# Each optimizer divides by its own scale (the single one saw no overflow): both apply
# 3 * g, clipped to norm 1.
single.optimizer.apply([tf.constant(3 * u) * single.optimizer.dynamic_scale for u in units],
                       single.trainable_variables)
moved = max(float(np.abs(a - v.numpy()).max()) for a, v in zip(before, variables))
gap = max(float(np.abs(a.numpy() - b.numpy()).max())
          for a, b in zip(variables, single.trainable_variables))
print(json.dumps({"skipped": skipped, "halved": halved, "moved": moved, "gap": gap,
                  "steps_after_overflow": steps_after_overflow}))
"""


@pytest.fixture(scope="module")
def optimizer_checks():
    return run_on_devices(2, OPTIMIZER_CHECKS)


@pytest.mark.slow
def test_an_overflow_on_one_replica_skips_the_step_on_all(optimizer_checks):
    assert optimizer_checks["skipped"]  # no replica applied the overflowing step
    assert optimizer_checks["halved"] == 0.5  # and the scale was lowered once
    assert optimizer_checks["steps_after_overflow"] == 0


@pytest.mark.slow
def test_clip_norm_clips_the_summed_gradient_as_one_device_does(optimizer_checks):
    # lr 0.5 times a gradient clipped to norm 1 moves the weights by up to 0.5; the
    # replicas' weights equal one device's within float32 rounding of that step.
    assert optimizer_checks["moved"] > 1e-3
    assert optimizer_checks["gap"] < 1e-6


# The same run on one device and on two replicas, with a learning rate so small that the
# weights stay put (1e-9 x gradients of order 1): batch norm's moving statistics are then
# a function of the batches alone. Batch 64 is two parts of 32.
FROZEN_WEIGHTS = [*TINY, "--model", "resnet18", "--lr", "1e-9", "--l2", "0", "--epochs", "1",
                  "--schedule", "constant", "--augment", "none", "--val-size", "0",
                  "--deterministic"]

BATCH_NORM_CHECKS = """
import keras, numpy as np
from tfresnet.cli.train import main
import tfresnet

out = sys.argv[1]
stats = {}
for strategy in ("one", "mirrored"):
    assert main([*sys.argv[2:], "--strategy", strategy, "--output-dir", out, "--name",
                 strategy]) == 0
    model = keras.saving.load_model(f"{out}/{strategy}/last.keras").network
    stats[strategy] = [[layer.moving_mean.numpy().tolist(),
                        layer.moving_variance.numpy().tolist()]
                       for layer in model._flatten_layers()
                       if isinstance(layer, keras.layers.BatchNormalization)]
print(json.dumps(stats))
"""


@pytest.mark.slow
def test_batch_norm_statistics_come_from_every_replica(tmp_path):
    stats = run_on_devices(2, BATCH_NORM_CHECKS, tmp_path, *FROZEN_WEIGHTS)
    assert len(stats["one"]) == len(stats["mirrored"]) == 20  # ResNet-18's batch norms
    # The stem's batch norm sees the convolved images alone; every later one sees what the
    # batch norms before it made of each replica's 32 images (batch statistics of 32, not
    # 64), which one device does not compute without --sync-bn.
    (mean1, var1), (mean2, var2) = stats["one"][0], stats["mirrored"][0]
    # The moving mean is linear in the batch means: the replicas' average equals one
    # device's up to float32 summation order (replica 0's alone was off by ~1e-2).
    np.testing.assert_allclose(mean2, mean1, rtol=1e-4, atol=1e-5)
    # The averaged variance leaves out the spread of the two halves' means, of order 1/32
    # of a batch's variance (3 %): lower, and never by much more than that.
    var1, var2 = np.array(var1), np.array(var2)
    assert np.all(var2 <= var1 * (1 + 1e-4) + 1e-6)
    assert np.all(var2 >= var1 * (1 - 0.1) - 1e-6)


AUGMENTATION_CHECKS = """
import numpy as np
from tfresnet.data.augment import Augmenter
from tfresnet.models import get_model
from tfresnet.models.classifier import Classifier
from tfresnet.models.preprocessing import ImagePreprocessor

strategy = tf.distribute.MirroredStrategy(
    [d.name for d in tf.config.list_logical_devices("CPU")])
images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype("uint8")
labels = np.eye(10, dtype="float32")[np.arange(8)]
augmenter = Augmenter("crop,flip,cutout,mixup", 10, seed=3)
outputs = {}
for name, place in (("one", tf.distribute.get_strategy()), ("two", strategy)):
    with place.scope():
        model = Classifier(get_model("small_cnn", 10), ImagePreprocessor((32, 32)))
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        model.set_augmenter(augmenter)
    augmented = tf.function(lambda: place.run(model.augment, args=((images, labels),)))()
    outputs[name] = [v.numpy().tolist() for v in place.experimental_local_results(
        augmented[0])]
one_device = augmenter(images, labels, 0)[0].numpy().tolist()
print(json.dumps({"same_as_host": outputs["one"][0] == one_device,
                  "replicas_differ": outputs["two"][0] != outputs["two"][1],
                  "again": outputs["two"] == [v.numpy().tolist() for v in
                      strategy.experimental_local_results(tf.function(lambda: strategy.run(
                          model.augment, args=((images, labels),)))()[0])]}))
"""


@pytest.mark.slow
def test_each_replica_draws_its_own_augmentation():
    result = run_on_devices(2, AUGMENTATION_CHECKS)
    assert result["same_as_host"]  # one device: the host's stream, unchanged
    assert result["replicas_differ"]  # two: each its own crops, flips, boxes, weights
    assert result["again"]  # and the same again at the same step (a resumed run)


# The plan each device count gets without --batch-size, through `train`'s own assembly.
PLANS = """
from tfresnet.config import TrainConfig
from tfresnet.runtime.session import Runtime
from tfresnet.training.plan import describe_run, prepare_run

devices = [d.name for d in tf.config.list_logical_devices("CPU")]
config = TrainConfig(dataset="digits", model="small_cnn", lr=0.1).validate()
plans = {}
for count in (1, 2, 8):
    strategy = (tf.distribute.get_strategy() if count == 1
                else tf.distribute.MirroredStrategy(devices[:count]))
    _, plan = prepare_run(config, Runtime(strategy, "float32", False, "cpu"))
    plans[count] = [plan.batch_size, plan.learning_rate, describe_run(config, plan)]
print(json.dumps(plans))
"""


@pytest.mark.slow
def test_the_default_plan_on_one_two_and_eight_devices():
    plans = run_on_devices(8, PLANS)
    # The digits' training split (1,293): 128 a replica, halved until an epoch has 12 batches, never
    # below 16 a replica; the learning rate scales with the global batch.
    assert plans["1"][:2] == [64, pytest.approx(0.05)]
    assert plans["2"][:2] == [64, pytest.approx(0.05)]
    assert plans["8"][:2] == [128, pytest.approx(0.1)]
    assert "batch 64 (32 per replica) x 20 steps" in plans["2"][2]
    assert "batch 128 (16 per replica) x 10 steps" in plans["8"][2]
    assert "(--lr 0.1 scaled to the batch)" in plans["1"][2]


TWO_RUNS = """
from tfresnet.cli.train import main

out = sys.argv[1]
common = [*sys.argv[2:], "--strategy", "mirrored", "--output-dir", out]
codes = [main([*common, "--model", "resnet18", "--sync-bn", "--name", "first"]),
         main([*common, "--model", "small_cnn", "--name", "second"])]
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_runs_one_after_another_in_one_process(tmp_path):
    """A notebook's second fit under MirroredStrategy, after one with --sync-bn (5 steps
    each)."""
    args = [*TINY, "--batch-size", "256", "--epochs", "1", "--val-size", "0"]
    assert run_on_devices(2, TWO_RUNS, tmp_path, *args) == [0, 0]
