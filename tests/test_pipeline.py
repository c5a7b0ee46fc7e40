import numpy as np
import pytest
import tensorflow as tf

from tfresnet.data.augment import AUGMENTATIONS, PRESETS, Augmenter, parse_augment
from tfresnet.data.augment_ops import _beta, _log_gamma, crop, cutout, flip, mixup
from tfresnet.data.pipeline import make_eval_pipeline, make_train_pipeline
from tfresnet.errors import UserError


def batch(count=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (count, size, size, 3)).astype(np.float32)
    labels = tf.one_hot(np.arange(count) % 4, 4)
    return tf.constant(images), labels


SEED = tf.constant([5, 7], tf.int64)


@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("zero", "constant")])
def test_crop_is_a_padded_crop_within_pad_pixels(mode, np_mode):
    images, labels = batch()
    out, same_labels = crop(images, labels, SEED, pad=4, mode=mode)
    out = out.numpy()
    assert out.shape == images.shape
    moved = 0
    for image, result in zip(images.numpy(), out):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode=np_mode)
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(padded[dy:dy + 16, dx:dx + 16], result)]
        assert matches, "every crop is a 16x16 window of the padded image"
        moved += matches[0] != (4, 4)
    assert moved > 0
    np.testing.assert_array_equal(same_labels, labels)


def test_flip_is_an_exact_mirror_of_some_images():
    images, labels = batch(count=32)
    out = flip(images, labels, SEED)[0].numpy()
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy())]
    unchanged = [np.array_equal(o, i) for o, i in zip(out, images.numpy())]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 0 < sum(mirrored) < 32


def test_cutout_zeroes_exactly_one_square_per_image():
    images, labels = batch(count=16, size=32)
    out = cutout(images, labels, SEED, size=8)[0].numpy()
    for result in out:
        zero = np.all(result == 0, axis=-1)
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        # The zeroed pixels form one solid rectangle, 8x8 unless clipped by a border.
        assert zero.sum() == len(rows) * len(cols)
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        assert len(rows) <= 8 and len(cols) <= 8
        if 0 not in rows and 31 not in rows:
            assert len(rows) == 8


def test_mixup_labels_sum_to_one_and_mix_images():
    images, labels = batch()
    mixed, mixed_labels = mixup(images, labels, SEED, alpha=0.4)
    np.testing.assert_allclose(mixed_labels.numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert not np.array_equal(mixed.numpy(), images.numpy())


def test_same_seed_same_batch_other_seed_other_batch():
    x = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), np.uint8)
    y = np.arange(64) % 10

    def first_batch(seed):
        dataset, _ = make_train_pipeline(x, y, 10, 16, Augmenter("strong", 10, seed), seed)
        return next(iter(dataset))[0].numpy()

    np.testing.assert_array_equal(first_batch(1), first_batch(1))
    assert not np.array_equal(first_batch(1), first_batch(2))


def test_epochs_are_fresh_permutations_and_resume_is_exact():
    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1).repeat(3, axis=-1)
    y = np.arange(40) % 4
    dataset, steps = make_train_pipeline(x, y, 4, 10, None, seed=3)
    assert steps == 4
    stream = [b[0].numpy()[:, 0, 0, 0] for b in dataset.take(8)]
    epoch1, epoch2 = np.concatenate(stream[:4]), np.concatenate(stream[4:])
    assert sorted(epoch1) == list(range(40)) and sorted(epoch2) == list(range(40))
    assert not np.array_equal(epoch1, epoch2)
    resumed, _ = make_train_pipeline(x, y, 4, 10, None, seed=3, start_epoch=1)
    np.testing.assert_array_equal(
        np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in resumed.take(4)]), epoch2)


def test_eval_pipeline_keeps_order_and_uint8():
    x = np.random.default_rng(0).integers(0, 255, (10, 8, 8, 3), np.uint8)
    batches = list(make_eval_pipeline(x, np.arange(10) % 3, 3, 4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype == tf.uint8
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)


def test_presets_and_spec_parsing():
    assert [n for n, _ in parse_augment("standard")] == ["crop", "flip"]
    assert [n for n, _ in parse_augment("shift_flip")] == ["shift", "flip"]
    assert parse_augment("seed") == parse_augment("shift_flip")  # the name before 0.2
    assert parse_augment("strong", num_classes=100)[2] == ("cutout", {"size": 16})
    assert parse_augment("strong", num_classes=10)[2] == ("cutout", {"size": 8})
    assert parse_augment("crop:pad=2:mode=zero") == [("crop", {"pad": 2, "mode": "zero"})]
    assert parse_augment("none") == []


@pytest.mark.parametrize("spec,message", [
    ("blur", "unknown augmentation 'blur'"),
    ("crop:size=3", "has no parameter 'size'"),
    ("crop:pad=x", "needs a number"),
    ("crop:mode=wrap", "mode must be one of"),
    ("mixup:alpha=0", "alpha must be > 0"),
    ("cutout:size=-1", "non-negative"),
])
def test_bad_augmentation_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_augment(spec)


def test_every_augmentation_runs_on_a_batch():
    images, labels = batch(size=32)
    for name in AUGMENTATIONS:  # a newly registered one is covered too
        out, out_labels = Augmenter(name, 4, seed=0)(images, labels, 3)
        assert out.shape == images.shape and out_labels.shape == labels.shape
        np.testing.assert_allclose(out_labels.numpy().sum(axis=1), 1.0, rtol=1e-5)


def _compiled(spec):
    """The spec's augmenter run once under ``tf.function(jit_compile=True)``."""
    images, labels = batch(count=4, size=16)
    augmenter = Augmenter(spec, 4, seed=0)
    out, out_labels = tf.function(lambda x, y: augmenter(x, y, 3), jit_compile=True)(
        images, labels)
    assert out.shape == images.shape and out_labels.shape == labels.shape
    np.testing.assert_allclose(out_labels.numpy().sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_xla_flag_is_truthful(name):
    parse_augment(name)  # its defaults are valid
    if AUGMENTATIONS[name].xla:
        _compiled(name)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported operations"):
            _compiled(name)


@pytest.mark.parametrize("spec", [*PRESETS, "crop,flip,cutout,mixup:alpha=0.4", "crop,flip,cutmix",
                                  "mixup:alpha=0.1,cutmix:alpha=2"])
def test_presets_and_mixing_specs_compile_with_xla(spec):
    _compiled(spec)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_beta_draws_have_beta_mean_and_variance(alpha):
    seeds = tf.random.stateless_uniform([4000, 2], [0, 1], minval=None, maxval=None,
                                        dtype=tf.int64)
    draws = tf.function(jit_compile=True)(lambda s: tf.map_fn(
        lambda seed: _beta(seed, alpha), s, fn_output_signature=tf.float32))(seeds).numpy()
    assert np.all((draws >= 0) & (draws <= 1))
    # 4000 draws: the mean's standard error is < 0.007 and the variance's < 0.0014, so
    # these bounds are > 4 standard errors; Beta(a + 1, a + 1) or Beta(0.25, 0.25) fail.
    assert abs(draws.mean() - 0.5) < 0.03
    assert abs(draws.var() - 1 / (4 * (2 * alpha + 1))) < 0.006
    # Beta hides a gamma's scale: check Gamma(alpha, 1)'s mean, alpha, too (4 standard errors).
    gammas = np.exp(_log_gamma([4000], tf.constant([3, 4], tf.int64), alpha).numpy())
    assert abs(gammas.mean() - alpha) < 4 * np.sqrt(alpha / 4000)


@pytest.mark.parametrize("alpha", [0.1, 0.4, 1, 2.0])
def test_beta_is_a_function_of_the_seed_eagerly_and_under_xla(alpha):
    seeds = [tf.constant(s, tf.int64) for s in ([5, 7], [2**40, -3], [-(2**62), 2**33 + 1])]
    eager = [_beta(seed, alpha).numpy() for seed in seeds]
    assert eager == [_beta(seed, alpha).numpy() for seed in seeds]
    assert len(set(eager)) == len(eager)
    compiled = tf.function(lambda seed: _beta(seed, alpha), jit_compile=True)
    np.testing.assert_allclose([compiled(seed).numpy() for seed in seeds], eager,
                               rtol=1e-5, atol=1e-6)


def test_default_batch_gives_small_data_sets_enough_steps():
    from types import SimpleNamespace

    from tfresnet.config import TrainConfig
    from tfresnet.training.plan import batch_and_steps

    def images(count):
        return SimpleNamespace(x_train=np.zeros((count, 1), "uint8"))

    assert batch_and_steps(TrainConfig(), images(45_000)) == (128, 351)
    assert batch_and_steps(TrainConfig(), images(4_500)) == (128, 35)
    assert batch_and_steps(TrainConfig(), images(450)) == (32, 14)  # 128 gave 3 steps
    assert batch_and_steps(TrainConfig(), images(100)) == (16, 6)  # never below 16
    assert batch_and_steps(TrainConfig(batch_size=128), images(450)) == (128, 3)  # as asked


def test_the_default_batch_keeps_each_replicas_work_and_scales_the_lr():
    """Without --batch-size, N replicas (GPUs) train 128 images each and the learning rate
    scales linearly with the global batch; an explicit --batch-size stays global."""
    from types import SimpleNamespace

    from tfresnet.config import TrainConfig
    from tfresnet.optim.optimizers import base_learning_rate
    from tfresnet.training.plan import batch_and_steps

    cifar = SimpleNamespace(x_train=np.zeros((45_000, 1), "uint8"))
    for replicas, batch, steps in ((1, 128, 351), (2, 256, 175), (8, 1024, 43)):
        assert batch_and_steps(TrainConfig(), cifar, replicas) == (batch, steps)
        assert base_learning_rate(TrainConfig(lr=0.1).optimizer_settings, batch,
                                  batch_is_default=True) == pytest.approx(0.1 * replicas)
    # A small set still gets enough steps, never below 16 per replica.
    small = SimpleNamespace(x_train=np.zeros((4_500, 1), "uint8"))
    assert batch_and_steps(TrainConfig(), small, 8) == (256, 17)
    assert batch_and_steps(TrainConfig(), SimpleNamespace(x_train=np.zeros((100, 1))), 8) == (
        96, 1)
    assert batch_and_steps(TrainConfig(batch_size=128), cifar, 8) == (128, 351)
    assert base_learning_rate(TrainConfig(lr=0.1).optimizer_settings, 128,
                              batch_is_default=False) == pytest.approx(0.1)
