import math

import keras
import numpy as np
import pytest

from tfresnet.config import TrainConfig
from tfresnet.losses import l2_penalty, l2_variables
from tfresnet.models import get_model
from tfresnet.optim import OneCycle, make_optimizer, make_schedule


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
    schedule = make_schedule(config, steps_per_epoch=100)
    for step in (0, 1, 10, 703, 10_000):
        assert float(schedule(step)) == pytest.approx(1e-3 / (1 + 0.004 * step), rel=1e-6)


def test_cosine_warmup_rises_linearly_then_decays_to_zero():
    config = TrainConfig(lr=0.1, epochs=10, warmup_epochs=2, schedule="cosine")
    schedule = make_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(10)) == pytest.approx(0.05, rel=1e-5)
    assert float(schedule(20)) == pytest.approx(0.1, rel=1e-5)
    assert float(schedule(60)) == pytest.approx(0.05, rel=1e-4)  # halfway through the decay
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_multiplies_by_gamma_at_milestones():
    config = TrainConfig(lr=0.1, schedule="step", milestones=[2, 4], gamma=0.1)
    schedule = make_schedule(config, steps_per_epoch=5)
    values = [float(schedule(s)) for s in (0, 9, 10, 19, 20)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-5)


def test_onecycle_shape_and_serialization():
    schedule = OneCycle(1.0, total_steps=100)
    assert float(schedule(0)) == pytest.approx(1 / 25)
    assert float(schedule(30)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(1e-4, rel=1e-3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(restored(50)) == pytest.approx(float(schedule(50)))


def test_scale_lr_follows_global_batch():
    config = TrainConfig(lr=0.1, batch_size=512, scale_lr=True, schedule="constant")
    assert make_schedule(config, 10) == pytest.approx(0.4)


def test_decoupled_weight_decay_skips_bn_and_biases():
    model = built(stem="seed")
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", weight_decay=0.01), 10)
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
