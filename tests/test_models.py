from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfresnet
from conftest import run_cli
from tfresnet.errors import UserError
from tfresnet.models import ImagePreprocessor, backbones, get_model, list_models
from tfresnet.models.blocks import BasicBlock
from tfresnet.models.layers import BatchNormalization
from tfresnet.runtime import cpu

FIXTURES = Path(__file__).parent / "fixtures"


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def non_trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)


# Trainable figures: torchvision's parameter counts (ImageNet stem) and the common CIFAR
# variant; the seed's model is 11,224,932.
PARAMETER_COUNTS = [
    ("resnet18", "imagenet", 1000, 11_689_512),
    ("resnet34", "imagenet", 1000, 21_797_672),
    ("resnet50", "imagenet", 1000, 25_557_032),
    ("resnet101", "imagenet", 1000, 44_549_160),
    ("resnet152", "imagenet", 1000, 60_192_808),
    ("resnet18", "cifar", 100, 11_220_132),
    ("resnet34", "cifar", 100, 21_328_292),
    ("resnet50", "cifar", 100, 23_705_252),
    ("resnet18", "cifar", 10, 11_173_962),
    ("resnet18", "biased_valid", 100, 11_224_932),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,stem,classes,trainable", PARAMETER_COUNTS,
                         ids=[f"{n}-{s}-{c}-trainable{t}" for n, s, c, t in PARAMETER_COUNTS])
def test_parameter_counts_match_reference(name, stem, classes, trainable):
    model = get_model(name, classes, stem=stem)
    model(np.zeros((1, 32, 32, 3), "float32"))
    assert trainable_count(model) == trainable, f"trainable should be {trainable:,}"
    # Keras' total also counts BN moving mean and variance: 2 per BN channel, = BN gammas.
    bn_gammas = sum(int(np.prod(v.shape)) for v in model.trainable_variables
                    if v.path.endswith("gamma"))
    assert non_trainable_count(model) == 2 * bn_gammas
    assert model.count_params() == trainable + 2 * bn_gammas


@pytest.mark.parametrize("stem,size,expected", [("cifar", 32, 10), ("imagenet", 224, 10),
                                                ("cifar", 224, 10), ("biased_valid", 32, 10)])
def test_output_shape(stem, size, expected):
    model = get_model("resnet18", expected, stem=stem, width=0.125)
    out = model(np.zeros((2, size, size, 3), "float32"))
    assert tuple(out.shape) == (2, expected)


def final_feature_map_size(model, size):
    return tuple(model.feature_map(np.zeros((1, size, size, 3), "float32")).shape[1:3])


def test_stems_downsample_as_specified():
    # CIFAR stem: only the three stride-2 stages (/8); ImageNet stem: also /4 in the stem.
    def size(stem, pixels):
        return final_feature_map_size(get_model("resnet18", 10, stem=stem, width=0.125), pixels)

    assert size("cifar", 64) == (8, 8)
    assert size("imagenet", 64) == (2, 2)
    # The seed's "valid" 3x3 conv trims 32 -> 30 before the stages.
    assert size("biased_valid", 32) == (4, 4)


PRETRAINED = [n for n in list_models() if n.endswith("_imagenet")]
# Pretrained backbones have no width option; one of each kind (v1, v2) is saved and reloaded,
# the deeper ones share its code and are only built (saving 60 M parameters is slow).
ROUND_TRIP = [n for n in list_models() if n not in PRETRAINED] + [
    "resnet50_imagenet", "resnet50v2_imagenet"]


def small(name, classes):
    if name.endswith("_imagenet"):
        return get_model(name, classes, image_size=32)
    return get_model(name, classes, width=0.125)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_keras_round_trip_gives_identical_outputs(name, tmp_path):
    model = small(name, 7)
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    expected = model(x, training=False)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # no custom_objects, safe mode
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(x, training=False), expected)
    assert every_batch_norm_fused(loaded)


def every_batch_norm_fused(network):
    """Whether each batch norm of ``network`` (Keras Applications' backbones included)
    runs tfresnet's fused call."""
    norms = [layer for layer in network._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    return all(type(layer) is BatchNormalization for layer in norms)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "small_cnn"])
def test_forward_backward_step_changes_weights(name):
    model = get_model(name, 5, width=0.125)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(1).random((4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    model(x)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(changed[-2:]) and sum(changed) > len(changed) // 2


def _bn_step(layer, x, jit=False):
    """The outputs, moving mean and variance, and d(x, gamma, beta) of a training step, then
    the outputs of an inference call; and the op types of both."""

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(tf.cast(x, layer.compute_dtype), training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    train = tf.function(step, jit_compile=jit)
    infer = tf.function(lambda x: layer(tf.cast(x, layer.compute_dtype), training=False),
                        jit_compile=jit)
    ops = {op.type for function in (train, infer)
           for op in function.get_concrete_function(x).graph.get_operations()}
    y, grads = train(x)
    return [np.asarray(y, "float32"), layer.moving_mean.numpy(),
            layer.moving_variance.numpy(), *[g.numpy() for g in grads],
            np.asarray(infer(x), "float32")], ops


@pytest.mark.parametrize("dtype,jit,rtol", [("float32", False, 1e-5), ("float32", True, 1e-5),
                                            ("mixed_bfloat16", False, 1e-2)])
def test_batch_norm_runs_through_the_fused_kernel_with_keras_numbers(dtype, jit, rtol):
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 6, 6, 5)), "float32")
    results = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5, dtype=dtype)
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 5))
        layer.beta.assign(np.linspace(-1, 1, 5))
        results.append(_bn_step(layer, x, jit))
    (keras_values, keras_ops), (fused_values, fused_ops) = results
    assert "FusedBatchNormV3" in fused_ops and "FusedBatchNormV3" not in keras_ops
    names = ["y", "moving mean", "moving variance", "dx", "dgamma", "dbeta", "inference"]
    for name, want, got in zip(names, keras_values, fused_values):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(),
                                   err_msg=name)


@pytest.mark.parametrize("flags, channels, in_float32", [
    ({"avx512_bf16"}, 16, False), ({"avx512_bf16", "amx_bf16"}, 16, True),
    ({"avx512_bf16"}, 8, True)])
def test_bfloat16_batch_norm_runs_in_float32_only_where_the_cpu_kernel_is_slow(
        monkeypatch, flags, channels, in_float32):
    # AMX: oneDNN's bfloat16 kernel was 5x slower, so float32 inside; without AMX the
    # bfloat16 kernel was the faster one from 16 channels on. Either way Keras' numbers,
    # to bfloat16 precision.
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    x = tf.constant(np.random.default_rng(0).normal(2, 3, (8, 6, 6, channels)), "float32")
    results = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-5, dtype="mixed_bfloat16")
        layer.build(x.shape)
        results.append(_bn_step(layer, x)[0])
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(x).graph
    kinds = {op.get_attr("T") for op in graph.get_operations() if op.type == "FusedBatchNormV3"}
    assert kinds == {tf.float32 if in_float32 else tf.bfloat16}


def test_zero_init_residual_and_dropout_options():
    model = get_model("resnet18", 10, width=0.125, zero_init_residual=True, dropout=0.3)
    model(np.zeros((1, 32, 32, 3), "float32"))
    assert all(np.all(b.bn2.gamma.numpy() == 0) for b in model.blocks)
    assert np.all(model.blocks[0].bn1.gamma.numpy() == 1)
    assert model.drop is not None and model.drop.rate == 0.3


def test_biased_valid_stem_has_biases_and_cifar_stem_does_not():
    seed = get_model("resnet18", 100, stem="biased_valid", width=0.125)
    cifar = get_model("resnet18", 100, stem="cifar", width=0.125)
    for model in (seed, cifar):
        model(np.zeros((1, 32, 32, 3), "float32"))
    assert any(v.path.endswith("conv1/bias") for v in seed.trainable_variables)
    assert not any(v.path.endswith("conv1/bias") for v in cifar.trainable_variables)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "resnet19"}, "unknown model 'resnet19'; choose one of resnet101"),
    ({"stem": "tiny"}, "unknown stem 'tiny'; choose one of cifar, imagenet, biased_valid"),
    ({"num_classes": 0}, "num_classes must be a positive int"),
    ({"width": -1.0}, "width must be a positive float"),
    ({"colour": 1}, "bad options for model 'resnet18'"),
])
def test_bad_input_is_a_one_line_value_error(kwargs, message):
    name = kwargs.pop("name", "resnet18")
    classes = kwargs.pop("num_classes", 10)
    with pytest.raises(ValueError) as info:
        get_model(name, classes, **kwargs)
    assert isinstance(info.value, UserError)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(set(PRETRAINED) - set(ROUND_TRIP)))
def test_deeper_pretrained_backbones_build(name):
    network = small(name, 3)
    assert tuple(network(np.zeros((1, 32, 32, 3), "float32")).shape) == (1, 3)
    assert every_batch_norm_fused(network)


def test_registry_lists_the_family_baselines_and_pretrained():
    own = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "small_cnn"]
    pretrained = ["resnet18_imagenet", "resnet34_imagenet"] + [
        f"{a}{v}_imagenet" for a in ("resnet50", "resnet101", "resnet152") for v in ("", "v2")]
    assert list_models() == sorted(own + pretrained)
    assert tfresnet.get_model is get_model


def test_a_keras_file_of_version_0_1_loads_with_its_old_names_and_outputs():
    # Written by tfresnet 0.1: stem "seed", the network stored as Classifier.backbone.
    model = keras.saving.load_model(FIXTURES / "classifier_v0.1_seed_stem.keras")
    expected = np.load(FIXTURES / "classifier_v0.1_seed_stem.npz")
    np.testing.assert_allclose(model(expected["images"], training=False), expected["logits"],
                               rtol=1e-5, atol=1e-3)
    assert model.network.stem == "biased_valid" and model.backbone is model.network
    assert model.class_names == [f"c{i}" for i in range(10)]


# Written by tfresnet 0.3.0 (commit 7214157), each the best.keras of a one-epoch run:
# python -m tfresnet.train --dataset digits --model resnet18 --width 0.0625 (cifar_stem);
# ... --model resnet18_imagenet --transfer scratch --image-size 32 --width 0.0625 (transfer);
# ... --dataset <a folder of 48x64 photos> --model small_cnn --width 0.25 --image-size 32
# (photo_crop: trained on photos, so it carries the evaluation centre crop, 0.875).
@pytest.mark.parametrize("kind", ["cifar_stem", "transfer"])
def test_keras_files_of_version_0_3_load_with_their_outputs(kind):
    model = tfresnet.load_model(FIXTURES / f"classifier_v0.3_{kind}.keras")
    expected = np.load(FIXTURES / f"classifier_v0.3_{kind}.npz")
    np.testing.assert_allclose(model(expected["images"], training=False), expected["logits"],
                               rtol=1e-5, atol=1e-4)
    assert model.class_names == [str(d) for d in range(10)] and model.eval_crop is None


@pytest.mark.parametrize("arch, mode", [("resnet18", "torch"), ("resnet50", "caffe"),
                                        ("resnet152v2", "tf")])
def test_a_pretrained_backbone_s_preprocessor_computes_keras_preprocess_input(arch, mode):
    # The in-model half: resize to the backbone's size, then its ImageNet preprocessing
    # as Keras Applications defines it (torchvision's mean/std, Caffe's BGR mean, -1..1).
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    preprocessor = ImagePreprocessor((32, 32), network_size=(48, 48),
                                     **backbones.PRETRAINED[arch].pixels)
    expected = keras.applications.imagenet_utils.preprocess_input(
        keras.ops.image.resize(pixels, (48, 48)), mode=mode)
    np.testing.assert_allclose(preprocessor(pixels), expected, rtol=1e-5, atol=1e-4)
    again = ImagePreprocessor.from_config(preprocessor.get_config())
    np.testing.assert_array_equal(again(pixels), preprocessor(pixels))


def test_a_photo_model_of_version_0_3_classifies_through_its_crop_as_it_did():
    model = tfresnet.load_model(FIXTURES / "classifier_v0.3_photo_crop.keras")
    expected = np.load(FIXTURES / "classifier_v0.3_photo_crop.npz")
    assert (model.eval_crop, model.image_size, model.class_names) == (0.875, (32, 32),
                                                                      ["blue", "red"])
    rows = tfresnet.classify(model, expected["images"], top_k=2)
    got = np.array([[next(t["probability"] for t in row["top"] if t["index"] == c)
                     for c in range(2)] for row in rows])
    np.testing.assert_allclose(got, expected["probabilities"], rtol=1e-4, atol=1e-6)


# Written by tfresnet 0.4.0 as the 0.3 ones above, but the transfer run at --image-size 48
# (its preprocessor resizes the 32-px digits): every piece of preprocessing in the file's
# ImagePreprocessor.
@pytest.mark.parametrize("kind", ["cifar_stem", "transfer", "photo_crop"])
def test_keras_files_of_version_0_4_load_with_their_outputs(kind):
    model = tfresnet.load_model(FIXTURES / f"classifier_v0.4_{kind}.keras")
    expected = np.load(FIXTURES / f"classifier_v0.4_{kind}.npz")
    if kind == "photo_crop":
        assert (model.preprocessor.crop, model.class_names) == (0.875, ["blue", "red"])
        rows = tfresnet.classify(model, expected["images"], top_k=2)
        got = [[next(t["probability"] for t in row["top"] if t["index"] == c)
                for c in range(2)] for row in rows]
        np.testing.assert_allclose(got, expected["probabilities"], rtol=1e-4, atol=1e-6)
        return
    np.testing.assert_allclose(model(expected["images"], training=False), expected["logits"],
                               rtol=1e-5, atol=1e-4)
    if kind == "transfer":
        assert model.preprocessor.network_size == (48, 48) and not model.network.takes_pixels


def test_a_narrow_resnet_at_64_px_trains_where_onednn_crashed():
    """TensorFlow 2.21's oneDNN filter gradient of a strided 1x1 convolution with fewer
    than 16 input channels at 64 px corrupted the heap (exit 134/139): the projection
    shortcut of ResNet-18 x0.125. The shortcut now subsamples, then convolves."""
    result = run_cli("tfresnet.bench", "--train", "--width", "0.125", "--image-size", "64",
                     "--batch-size", "8", "--steps", "2", "--repeats", "1", "--num-classes", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "img/s" in result.stdout


def test_the_subsampled_shortcut_is_the_strided_convolution():
    block = BasicBlock(8, 16, strides=2)
    assert block.subsample and not BasicBlock(16, 32, strides=2).subsample
    x = np.random.default_rng(0).normal(size=(2, 9, 10, 8)).astype("float32")
    block(x)
    strided = tf.nn.conv2d(x, block.shortcut_conv.kernel.numpy(), 2, "SAME")  # odd, even sides
    expected = block.shortcut_bn(strided, training=False).numpy()
    got = block.shortcut(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_synchronized_batch_norm_is_the_fused_one_on_one_device():
    """--sync-bn computes the batch's statistics in two passes; Keras' one pass (E[x^2] -
    E[x]^2) was off by 0.5 in the outputs at this mean and spread."""
    import tensorflow as tf

    from tfresnet.models.layers import BatchNormalization

    x = tf.constant(np.random.default_rng(0).normal(30.0, 0.1, (64, 4, 4, 8)), tf.float32)
    upstream = tf.constant(np.random.default_rng(1).normal(size=(64, 4, 4, 8)), tf.float32)
    found = []
    for synchronized in (False, True):
        layer = BatchNormalization(synchronized=synchronized)
        layer.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        found.append([y, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value]),
                      layer.moving_mean.value, layer.moving_variance.value])
    for fused, synchronized in zip(*found):  # float32 sums of 8,192 values, in two orders
        fused = np.asarray(fused)
        np.testing.assert_allclose(synchronized, fused, rtol=1e-3,
                                   atol=1e-4 * np.abs(fused).max() + 1e-6)
