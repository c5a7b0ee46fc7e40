import json

import cv2
import keras
import numpy as np
import pytest

import tfresnet
from conftest import history
from tfresnet.cli import train as train_command
from tfresnet.config import TrainConfig
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.models import (
    Classifier,
    ImagePreprocessor,
    RunTransferNet,
    TransferNet,
    get_model,
)
from tfresnet.models.backbones import build_base
from tfresnet.models.layers import BatchNormalization
from tfresnet.models.weights import load_pretrained
from tfresnet.runtime.session import configure
from tfresnet.training import run as run_module
from tfresnet.training.build import build_model
from tfresnet.training.callbacks import TransferStages
from tfresnet.training.network import make_network
from tfresnet.training.plan import build_settings, input_size, make_plan


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """ImageNet weights cannot be downloaded here: a local file of the right architecture."""
    keras.utils.set_random_seed(3)
    base = build_base("resnet18", 32)
    base(np.zeros((1, 32, 32, 3), "float32"))
    path = tmp_path_factory.mktemp("weights") / "resnet18_base.weights.h5"
    base.save_weights(path)
    return path


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", val_size=64)
    data.x_train, data.y_train = data.x_train[:128], data.y_train[:128]
    return data


def one_step_model(transfer, weights_file, digits, **overrides):
    config = TrainConfig(model="resnet18", transfer=transfer, weights=str(weights_file),
                         image_size=32, batch_size=32, lr=0.05, epochs=1, **overrides)
    config.validate()
    runtime = configure(config.runtime_settings, config.model, config.width)
    plan = make_plan(config, digits, runtime, input_size(config))
    return build_model(digits, runtime, plan, **build_settings(config)), config


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


def fit_steps(model, digits, callbacks=()):
    labels = keras.utils.to_categorical(digits.y_train, 10)
    model.fit(digits.x_train, labels, batch_size=32, epochs=1, verbose=0,
              callbacks=list(callbacks))


class BackboneWatch(keras.callbacks.Callback):
    """Records after each epoch whether the pretrained backbone has changed yet."""

    def on_train_begin(self, logs=None):
        self.start = snapshot(self.model.network.feature_extractor.trainable_weights)
        self.changed = []

    def on_epoch_end(self, epoch, logs=None):
        now = self.model.network.feature_extractor.trainable_weights
        self.changed.append(any(not np.array_equal(a, v.numpy())
                                for a, v in zip(self.start, now)))


def test_frozen_trains_only_the_head(weights_file, digits):
    model, _ = one_step_model("frozen", weights_file, digits)
    base = model.network.feature_extractor
    weights, stats = snapshot(base.trainable_weights + base.non_trainable_weights), None
    stats = snapshot([v for v in base.non_trainable_weights if "moving" in v.path])
    head = snapshot(model.network.fc.weights)
    fit_steps(model, digits)
    assert not base.trainable_weights and base.non_trainable_weights
    for before, after in zip(weights, base.trainable_weights + base.non_trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert stats and all(np.array_equal(a, v.numpy()) for a, v in
                         zip(stats, [v for v in base.non_trainable_weights if "moving" in v.path]))
    assert not np.array_equal(head[0], model.network.fc.kernel.numpy())


def test_finetune_changes_the_backbone_and_its_bn_statistics(weights_file, digits):
    model, config = one_step_model("finetune", weights_file, digits)
    base = model.network.feature_extractor
    kernels = snapshot(base.trainable_weights)
    moving = [v for v in base.non_trainable_weights if "moving_mean" in v.path]
    stats = snapshot(moving)
    fit_steps(model, digits, [TransferStages(config.transfer_settings)])
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(kernels, base.trainable_weights))
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(stats, moving))


def test_backbone_lr_multiplier_scales_the_update(weights_file, digits):
    updates = {}
    for multiplier in (1.0, 0.25):
        keras.utils.set_random_seed(0)
        model, config = one_step_model("finetune", weights_file, digits, backbone_lr=multiplier,
                                       optimizer="sgd", momentum=0.0, l2=0.0,
                                       schedule="constant", augment="none")
        kernel = model.network.feature_extractor.stem_conv.kernel
        before = kernel.numpy().copy()
        model.set_backbone_lr(multiplier)
        labels = keras.utils.to_categorical(digits.y_train[:32], 10)
        model.train_on_batch(digits.x_train[:32], labels)
        updates[multiplier] = kernel.numpy() - before
    np.testing.assert_allclose(updates[0.25], 0.25 * updates[1.0], rtol=1e-3, atol=1e-7)


def test_local_weights_round_trip_and_mismatch(tmp_path, weights_file):
    source = TransferNet("resnet18", 10, image_size=32)
    fresh = TransferNet("resnet18", 10, image_size=32)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    source(x), fresh(x)
    load_pretrained(source, weights_file)
    load_pretrained(fresh, weights_file)
    fresh.fc.set_weights(source.fc.get_weights())
    np.testing.assert_array_equal(source(x, training=False), fresh(x, training=False))

    model_file = tmp_path / "whole.keras"
    source.save(model_file)
    other = TransferNet("resnet18", 10, image_size=32)
    other(x)
    load_pretrained(other, model_file)  # a .keras file works too
    np.testing.assert_array_equal(other.feature_extractor.get_weights()[0],
                                  source.feature_extractor.get_weights()[0])

    wrong = tmp_path / "resnet50_base.weights.h5"
    big = build_base("resnet50", 32)
    big.save_weights(wrong)
    with pytest.raises(UserError, match="does not fit resnet18"):
        load_pretrained(fresh, wrong)
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(fresh, tmp_path / "missing.weights.h5")


@pytest.mark.parametrize("overrides,message", [
    ({"model": "vgg16", "transfer": "frozen", "weights": "x.h5"}, "no pretrained variant"),
    ({"model": "resnet50_imagenet"}, "choose --transfer"),
    ({"model": "resnet18", "transfer": "frozen", "weights": "x.h5", "image_size": 16},
     "--image-size must be at least 32"),
])
def test_transfer_bad_input(overrides, message):
    config = TrainConfig(**overrides)
    with pytest.raises(UserError, match=message):
        make_network(config.model_settings, config.transfer_settings, 10, input_size(config))


@pytest.mark.parametrize("settings,message", [
    ({"transfer": "scratch", "stem": "biased_valid"},
     "--stem biased_valid does not apply to --transfer scratch"),
    ({"transfer": "scratch", "zero_init_residual": True},
     "--zero-init-residual does not apply to --transfer scratch"),
    ({"model": "resnet50_imagenet", "transfer": "scratch", "width": 0.5},
     "--width applies to the resnet18/resnet34 backbones tfresnet builds"),
    ({"transfer": "finetune", "weights": "imagenet", "width": 0.5},  # keras-hub's preset
     "not to resnet18 from Keras Applications or a preset"),
    ({"transfer": "frozen", "weights": "imagenet", "backbone_lr": 0.5},
     "--backbone-lr acts only with --transfer finetune or two-stage, not frozen"),
    ({"model": "resnet18", "backbone_lr": 0.5}, "--backbone-lr acts only with"),
    ({"transfer": "finetune", "weights": "imagenet", "head_epochs": 1},
     "--head-epochs acts only with --transfer two-stage, not finetune"),
    ({"model": "resnet18", "weights": "imagenet"}, "--weights loads a pretrained backbone"),
])
def test_a_model_setting_the_run_would_ignore_is_refused_before_any_data(settings, message):
    """A pretrained backbone has the ImageNet stem and its own initialisation; the transfer
    settings act in their modes only. Defaults never count as given."""
    config = TrainConfig(**{"model": "resnet18_imagenet", **settings})
    with pytest.raises(UserError, match=message):
        config.validate()
    TrainConfig(model="resnet18_imagenet", transfer="frozen", weights="imagenet").validate()


def test_the_model_settings_a_backbone_takes_act(weights_file):
    config = TrainConfig(model="resnet18_imagenet", transfer="two-stage",
                         weights=str(weights_file), stem="imagenet", width=0.125,
                         dropout=0.2, backbone_lr=0.5, head_epochs=1).validate()
    network = make_network(config.model_settings, config.transfer_settings, 10, 32)
    assert (network.width, network.dropout) == (0.125, 0.2)


def test_registry_has_pretrained_backbones():
    model = get_model("resnet50v2_imagenet", 5, image_size=32)
    assert isinstance(model, TransferNet) and model.arch == "resnet50v2"
    assert tuple(model(np.zeros((1, 32, 32, 3), "float32")).shape) == (1, 5)


def trial(weights_file, digits, **overrides):
    """One keras-tuner trial as the tuner runs it: ``HyperModel.build`` then ``fit``."""
    import keras_tuner as kt

    from tfresnet.tuning.search import ResNetHyperModel

    config = TrainConfig(**{"model": "resnet18", "weights": str(weights_file), "image_size": 32,
                            "batch_size": 32, "lr": 0.05, **overrides}).validate()
    runtime = configure(config.runtime_settings, config.model, config.width)
    hypermodel = ResNetHyperModel(config, digits, runtime, [], (0.05, 0.05), input_size(config))
    hp = kt.HyperParameters()
    return hypermodel, hp, hypermodel.build(hp)


def test_frozen_tuner_trial_trains_on_the_weights_files_backbone(weights_file, digits):
    hypermodel, hp, model = trial(weights_file, digits, transfer="frozen", epochs=1)
    source = build_base("resnet18", 32)
    source(np.zeros((1, 32, 32, 3), "float32"))
    source.load_weights(weights_file)
    expected = snapshot(source.weights)
    base = model.network.feature_extractor
    for before, after in zip(expected, base.weights):  # the file's backbone is loaded ...
        np.testing.assert_array_equal(before, after.numpy())
    head = snapshot(model.network.fc.weights)
    hypermodel.fit(hp, model)
    for before, after in zip(expected, base.weights):  # ... and left unchanged by training
        np.testing.assert_array_equal(before, after.numpy())
    assert not np.array_equal(head[0], model.network.fc.kernel.numpy())


@pytest.mark.slow
def test_two_stage_tuner_trial_under_float16_unfreezes_after_head_epochs(weights_file, digits):
    # The GPU's float16 path (float32: the timm checkpoint trial below).
    watch = BackboneWatch()
    try:
        hypermodel, hp, model = trial(weights_file, digits, transfer="two-stage",
                                      head_epochs=1, epochs=2, precision="mixed_float16")
        hypermodel.fit(hp, model, callbacks=[watch])
    finally:
        keras.mixed_precision.set_global_policy("float32")  # configure() set it globally
    assert watch.changed == [False, True]  # backbone fixed for the head epoch, then trained
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


# keras-hub presets and timm checkpoints. Nothing can be downloaded here: the tests write
# both formats locally, as a connected machine's download would leave them.
RESNET18_HUB = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                    stackwise_num_filters=[64, 128, 256, 512], stackwise_num_strides=[1, 2, 2, 2])


def write_timm_resnet(directory, blocks=(2, 2, 2, 2)):
    """A timm ResNet checkpoint (basic blocks): config.json + model.safetensors with
    torchvision's parameter names and layouts, random values, BN statistics included."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    state = {}

    def conv(name, out, inp, size):
        std = (2 / (inp * size * size)) ** 0.5
        state[f"{name}.weight"] = rng.normal(0, std, (out, inp, size, size)).astype("float32")

    def bn(name, channels):
        state[f"{name}.weight"] = rng.uniform(0.2, 0.6, channels).astype("float32")
        state[f"{name}.bias"] = rng.normal(0, 0.1, channels).astype("float32")
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, channels).astype("float32")
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, channels).astype("float32")
        state[f"{name}.num_batches_tracked"] = np.array(100, "int64")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for stage, count in enumerate(blocks):
        out = 64 * 2**stage
        for index in range(count):
            prefix = f"layer{stage + 1}.{index}"
            conv(f"{prefix}.conv1", out, inp, 3)
            bn(f"{prefix}.bn1", out)
            conv(f"{prefix}.conv2", out, out, 3)
            bn(f"{prefix}.bn2", out)
            if index == 0 and stage > 0:
                conv(f"{prefix}.downsample.0", out, inp, 1)
                bn(f"{prefix}.downsample.1", out)
            inp = out
    state["fc.weight"] = rng.normal(0, 0.01, (1000, 512)).astype("float32")
    state["fc.bias"] = np.zeros(1000, "float32")
    directory.mkdir(parents=True)
    save_file(state, str(directory / "model.safetensors"))
    arch = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}[tuple(blocks)]
    (directory / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": 1000, "num_features": 512,
        "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bilinear",
                           "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}))
    return directory


@pytest.fixture(scope="module")
def hub_sources(tmp_path_factory):
    """``(keras-hub preset directory, timm checkpoint directory)`` of random ResNet-18s."""
    keras_hub = pytest.importorskip("keras_hub")
    root = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.ResNetBackbone(**RESNET18_HUB, stackwise_num_blocks=[2, 2, 2, 2],
                                               block_type="basic_block")
    backbone.save_to_preset(root / "preset")
    keras_hub.layers.ResNetImageConverter(image_size=(224, 224), scale=1 / 127.5,
                                          offset=-1.0).save_to_preset(root / "preset")
    return root / "preset", write_timm_resnet(root / "timm")


def source_weights(preset):
    import keras_hub

    return keras_hub.models.ResNetBackbone.from_preset(str(preset)).get_weights()


def train_from(tmp_path, weights, transfer, *extra):
    args = ["--dataset", "digits", "--model", "resnet18_imagenet", "--transfer", transfer,
            "--weights", str(weights), "--image-size", "32", "--batch-size", "64",
            "--lr", "0.01", "--name", "run", "--output-dir", str(tmp_path), "--no-visualize",
            "--no-tensorboard", *extra]
    assert train_command.main(args) == 0
    return keras.saving.load_model(tmp_path / "run" / "last.keras")


@pytest.mark.slow
def test_frozen_run_from_a_keras_hub_preset_keeps_its_backbone_and_preprocessing(
        tmp_path, hub_sources):
    preset, _ = hub_sources
    model = train_from(tmp_path, preset, "frozen", "--epochs", "1")
    network = model.network
    assert network.preset["scale"] == [1 / 127.5] * 3 and network.preset["offset"] == [-1.0] * 3
    assert model.preprocessor.scale == [1 / 127.5] * 3  # the task's preprocessing is the preset's
    norms = [layer for layer in network.feature_extractor._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is BatchNormalization for layer in norms)  # fused
    for expected, found in zip(source_weights(preset), network.feature_extractor.get_weights()):
        np.testing.assert_array_equal(expected, found)  # loaded, and never trained


def test_two_stage_tuner_trial_from_a_timm_checkpoint(hub_sources, digits):
    _, timm = hub_sources
    watch = BackboneWatch()
    hypermodel, hp, model = trial(timm, digits, model="resnet18_imagenet",
                                  transfer="two-stage", head_epochs=1, epochs=2)
    hypermodel.fit(hp, model, callbacks=[watch])
    assert watch.changed == [False, True]  # backbone fixed for the head epoch, then trained
    source = [w for w, v in zip(source_weights(timm), model.network.feature_extractor.weights)
              if v.trainable]
    for expected, start in zip(source, watch.start):  # started from the checkpoint's weights
        np.testing.assert_array_equal(expected, start)
    # The timm config's mean and std became the pixel transform.
    np.testing.assert_allclose(model.network.preset["offset"], [-2.5, -1.6, -1.0])


def test_preset_weights_that_cannot_be_used_are_one_line_errors(tmp_path, hub_sources):
    preset, timm = hub_sources
    nothing = tmp_path / "not_a_preset"
    nothing.mkdir()
    (nothing / "config.json").write_text('{"architecture": "vit_base"}')
    cases = [
        ("resnet34", preset, "holds a basic_block ResNet with [2, 2, 2, 2] blocks per stage, "
                             "not resnet34"),
        ("resnet18", nothing, "is not a keras-hub ResNet preset or a timm ResNet checkpoint"),
        # Offline here (and a missing model online): the line says how to get it in.
        ("resnet18", "kaggle://tfresnet/missing/keras/missing/1", "download it once on a "
                                                                   "connected machine"),
    ]
    for model, weights, message in cases:
        config = TrainConfig(model=f"{model}_imagenet", transfer="frozen", weights=str(weights),
                             image_size=32).validate()
        with pytest.raises(UserError) as info:
            make_network(config.model_settings, config.transfer_settings, 10, input_size(config))
        assert message in str(info.value) and "\n" not in str(info.value)


def test_a_narrow_tfresnet_resnet_with_its_head_is_a_weights_source(tmp_path):
    # Pretrain-then-transfer within tfresnet: a ResNet-18 x0.125 run (ImageNet stem).
    x = np.zeros((1, 32, 32, 3), "float32")
    for stem in ("imagenet", "cifar"):
        source = get_model("resnet18", 5, stem=stem, width=0.125)
        source(x)
        source.save(tmp_path / f"{stem}.keras")
    model = TransferNet("resnet18", 3, image_size=32, width=0.125)
    model(x)
    load_pretrained(model, tmp_path / "imagenet.keras")
    expected = keras.saving.load_model(tmp_path / "imagenet.keras").get_weights()[:-2]  # no fc
    for a, b in zip(expected, model.feature_extractor.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="must have the ImageNet stem and the same --width"):
        load_pretrained(model, tmp_path / "cifar.keras")
    with pytest.raises(UserError, match="--width applies to the resnet18/resnet34 backbones"):
        TransferNet("resnet50", 3, image_size=32, width=0.5)


def test_freezing_is_one_setting_that_the_saved_config_follows():
    network = TransferNet("resnet18", 3, image_size=32, width=0.0625, frozen_base=True)
    assert network.frozen_base and not network.feature_extractor.trainable
    network.set_frozen(False)  # two-stage's unfreezing
    config = network.get_config()
    assert (config["frozen_base"], config["trainable_base"]) == (False, True)
    again = TransferNet.from_config(config)
    assert not again.frozen_base and again.feature_extractor.trainable
    # Files of 0.3 may hold either half of the pair: either freezes.
    assert TransferNet.from_config({**config, "trainable_base": False}).frozen_base


# Fine-tuning from a tfresnet run: a tiny run from scratch with the photo defaults (ResNet-18
# with the CIFAR stem, an image folder at 64 px), then a folder of other classes.
SOURCE_COLOURS = {"red": (220, 40, 40), "blue": (40, 40, 220)}
TARGET_COLOURS = {"green": (40, 200, 40), "grey": (128, 128, 128), "yellow": (220, 220, 40)}
TINY_RUN = ["--width", "0.0625", "--batch-size", "8", "--epochs", "1", "--no-tensorboard",
            "--no-visualize"]


def write_photos(root, colours, per_class, size=(45, 60)):
    """Per class, ``per_class`` noisy photos (not square: the photo view) of its colour."""
    rng = np.random.default_rng(1)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.clip(rng.normal(colour, 25, (*size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.jpg"), image[..., ::-1])


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """``(run folder, folder of three other classes)``: the run trained from scratch by
    ``tfresnet.train`` with the photo defaults on two classes."""
    root = tmp_path_factory.mktemp("photo_run")
    write_photos(root / "pets" / "train", SOURCE_COLOURS, 12)
    write_photos(root / "small" / "train", TARGET_COLOURS, 8)
    assert train_command.main(["--dataset", str(root / "pets"), *TINY_RUN, "--output-dir",
                               str(root), "--name", "source"]) == 0
    return root / "source", root / "small"


def without_head(network):
    """A network's weights, its dense classifier's left out."""
    head = {id(v) for v in network.fc.weights}
    return [w for w, v in zip(network.get_weights(), network.weights) if id(v) not in head]


class StartWatch(keras.callbacks.Callback):
    """The pretrained network's weights (batch norm statistics included) and the head's
    when training begins, before the first step; after each epoch, whether the pretrained
    ones have changed since."""

    start = None

    def on_train_begin(self, logs=None):
        if self.start is None:  # two-stage and resumed runs call fit more than once
            network = self.model.network
            self.start = snapshot(network.feature_extractor.weights)
            self.head = snapshot(network.fc.weights)
            self.changed = []

    def on_epoch_end(self, epoch, logs=None):
        now = self.model.network.feature_extractor.weights
        self.changed.append(any(not np.array_equal(a, v.numpy())
                                for a, v in zip(self.start, now)))


@pytest.mark.slow
@pytest.mark.parametrize("mode,flags,changed", [
    ("frozen", [], [False]),
    ("finetune", [], [True]),
    ("two-stage", ["--head-epochs", "1", "--epochs", "2"], [False, True]),
])
def test_a_run_from_scratch_on_photos_fine_tunes_on_other_classes(photo_run, tmp_path,
                                                                  monkeypatch, mode, flags,
                                                                  changed):
    """Model, stem, width, input size and normalisation come from the run: none is given
    again. The network starts from the run's weights, the head is new."""
    source, folder = photo_run
    watch = StartWatch()
    callbacks = run_module.training_callbacks
    monkeypatch.setattr(run_module, "training_callbacks",
                        lambda *args: [*callbacks(*args), watch])
    assert train_command.main(["--dataset", str(folder), "--transfer", mode, "--weights",
                               str(source), *TINY_RUN, *flags, "--output-dir", str(tmp_path),
                               "--name", "run"]) == 0
    pretrained = tfresnet.load_model(source)
    for expected, start in zip(without_head(pretrained.network), watch.start, strict=True):
        np.testing.assert_array_equal(expected, start)
    assert watch.head[0].shape == (32, 3)  # ResNet-18 x0.0625's 32 features, 3 new classes
    assert watch.changed == changed  # frozen, or fixed for the head epoch, then trained
    model = tfresnet.load_model(tmp_path / "run")
    assert isinstance(model.network, RunTransferNet)
    assert model.class_names == list(TARGET_COLOURS) and model.name == "resnet18_classifier"
    last = keras.saving.load_model(tmp_path / "run" / "last.keras")
    assert last.network.frozen_base is (mode == "frozen")
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (settings["model"], settings["stem"], settings["width"]) == ("resnet18", "cifar",
                                                                        0.0625)
    ours, theirs = model.preprocessor, pretrained.preprocessor
    assert (ours.scale, ours.offset) == (theirs.scale, theirs.offset)  # the run's mean/std
    assert ours.input_size == ours.network_size == theirs.input_size == (64, 64)
    assert ours.crop == 0.875  # the new folder's photo view


@pytest.mark.parametrize("flags,message", [
    (["--model", "vgg16"], "--model vgg16 contradicts --weights"),
    (["--model", "resnet18_imagenet"], "--model resnet18_imagenet contradicts --weights"),
    (["--width", "0.5"], "--width 0.5 contradicts --weights"),
    (["--stem", "imagenet"], "--stem imagenet contradicts --weights"),
    (["--zero-init-residual"], "--zero-init-residual does not apply to --transfer finetune"),
])
def test_a_flag_that_contradicts_the_run_is_refused_before_any_data(photo_run, tmp_path, flags,
                                                                    message):
    source, _ = photo_run
    with pytest.raises(UserError) as info:  # a data set that would fail to load, later
        train_command.main(["--dataset", str(tmp_path / "missing"), "--transfer", "finetune",
                            "--weights", str(source), *flags, "--output-dir", str(tmp_path)])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_a_file_that_is_not_a_tfresnet_model_is_refused(tmp_path):
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    foreign.save(tmp_path / "foreign.keras")
    (tmp_path / "text.keras").write_text("not a Keras archive")
    for name, message in (("foreign.keras", "holds a Sequential, not a model trained by "
                                            "tfresnet.train"),
                          ("text.keras", "is not a Keras archive")):
        with pytest.raises(UserError) as info:
            train_command.main(["--dataset", str(tmp_path / "missing"), "--transfer",
                                "frozen", "--weights", str(tmp_path / name)])
        assert message in str(info.value) and "\n" not in str(info.value)


def assembled(config, data):
    """The compiled model ``tfresnet.train`` would train for ``config`` on ``data``, before
    its first step."""
    runtime = configure(config.runtime_settings, config.model, config.width)
    plan = make_plan(config, data, runtime, input_size(config))
    return build_model(data, runtime, plan, **build_settings(config))


def save_classifier(path, network, data, preprocessor=None):
    """A model file as a tfresnet run writes it; returns its path."""
    preprocessor = preprocessor or ImagePreprocessor.from_mean_std(data.image_size, data.mean,
                                                                   data.std)
    model = Classifier(network, preprocessor, [f"c{i}" for i in range(network.num_classes)],
                       dataset="elsewhere")
    model(data.x_test[:1])
    model.save(path)
    return path


@pytest.mark.parametrize("model,options,generations", [
    ("resnet18", {"stem": "imagenet", "width": 0.0625}, 1),  # the CIFAR stem: the photo run
    ("vgg16", {"width": 0.0625}, 1),
    ("small_cnn", {"width": 0.25}, 2),  # a fine-tuned run is a source in turn
    ("resnet18_imagenet", {"width": 0.0625, "image_size": 48}, 1),
])
def test_a_run_of_any_model_is_a_source_and_the_new_model_saves_and_loads(tmp_path, digits,
                                                                          model, options,
                                                                          generations):
    keras.utils.set_random_seed(5)
    network = get_model(model, 5, **options)
    preprocessor = (ImagePreprocessor(digits.image_size, network_size=(48, 48),
                                      **network.pixels)
                    if isinstance(network, TransferNet) else None)
    source = save_classifier(tmp_path / "source.keras", network, digits, preprocessor)
    for generation in range(generations):
        config = TrainConfig(transfer="finetune", weights=str(source), batch_size=32,
                             epochs=1).validate()
        assert (config.model, config.width) == (model, options["width"])
        assert input_size(config) == options.get("image_size", 32)
        built = assembled(config, digits)
        pretrained = keras.saving.load_model(source).network
        for expected, found in zip(without_head(pretrained),
                                   built.network.feature_extractor.get_weights(), strict=True):
            np.testing.assert_array_equal(expected, found)
        source = tmp_path / f"generation{generation}.keras"
        built.save(source)
        again = keras.saving.load_model(source)  # plain Keras, tfresnet imported
        images = digits.x_test[:4]
        np.testing.assert_allclose(again(images, training=False),
                                   built(images, training=False), rtol=1e-5, atol=1e-5)


def test_a_small_cnn_run_has_no_stem_to_give(tmp_path, digits):
    weights = save_classifier(tmp_path / "cnn.keras", get_model("small_cnn", 3), digits)
    with pytest.raises(UserError, match="--stem does not apply to the small_cnn of --weights"):
        TrainConfig(transfer="frozen", weights=str(weights), stem="imagenet").validate()


@pytest.mark.slow
def test_pretraining_at_one_input_size_fine_tunes_at_another(photo_run, tmp_path, digits):
    """The network runs at the run's size unless --image-size says otherwise; images of
    another size are resized inside the model."""
    source, folder = photo_run
    # 64-px photos -> 32-px digits: the model upsamples them to the network's 64.
    config = TrainConfig(transfer="frozen", weights=str(source), batch_size=32,
                         epochs=1).validate()
    model = assembled(config, digits)
    assert (model.preprocessor.input_size, model.preprocessor.network_size) == ((32, 32),
                                                                                (64, 64))
    # 32-px digits -> photos: decoded at the network's own 32, or it runs at --image-size.
    weights = str(save_classifier(tmp_path / "digits.keras", get_model("resnet18", 10,
                                                                       width=0.0625), digits))
    assert input_size(TrainConfig(transfer="finetune", weights=weights).validate()) == 32
    assert train_command.main(["--dataset", str(folder), "--transfer", "finetune", "--weights",
                               weights, *TINY_RUN, "--image-size", "64", "--output-dir",
                               str(tmp_path), "--name", "at64"]) == 0
    tuned = tfresnet.load_model(tmp_path / "at64")
    assert tuned.preprocessor.input_size == tuned.preprocessor.network_size == (64, 64)
    assert len(history(tmp_path / "at64")) == 1  # trained


def test_a_tuner_trial_fine_tunes_a_run_in_two_stages(photo_run, digits):
    source, _ = photo_run
    watch = BackboneWatch()
    hypermodel, hp, model = trial(source, digits, transfer="two-stage", head_epochs=1,
                                  epochs=2)
    assert isinstance(model.network, RunTransferNet)
    hypermodel.fit(hp, model, callbacks=[watch])
    assert watch.changed == [False, True]


def test_fit_fine_tunes_a_run_given_as_a_path(photo_run, tmp_path):
    source, folder = photo_run
    run = tfresnet.fit(dataset=folder, transfer="frozen", weights=source, batch_size=8,
                       epochs=1, tensorboard=False, visualize=False, output_dir=tmp_path,
                       name="from-python")
    assert run.summary["config"]["weights"] == str(source)
    assert isinstance(tfresnet.load_model(run.folder).network, RunTransferNet)
