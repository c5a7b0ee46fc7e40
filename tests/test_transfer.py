import keras
import numpy as np
import pytest

from tfresnet import assemble
from tfresnet import train as train_module
from tfresnet.assemble import build_model
from tfresnet.config import TrainConfig
from tfresnet.data import load_dataset
from tfresnet.errors import UserError
from tfresnet.models import TransferNet, get_model
from tfresnet.models.transfer import build_base, load_pretrained
from tfresnet.runtime import configure


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
    return build_model(config.validate(), digits, configure(config)), config


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
    fit_steps(model, digits, [assemble.TransferStages(config)])
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


def test_two_stage_unfreezes_at_the_right_epoch(tmp_path, weights_file, monkeypatch):
    watch = BackboneWatch()
    make_callbacks = train_module.make_callbacks
    monkeypatch.setattr(train_module, "make_callbacks",
                        lambda *a: make_callbacks(*a) + [watch])
    args = ["--dataset", "digits", "--model", "resnet18", "--transfer", "two-stage",
            "--weights", str(weights_file), "--image-size", "32", "--epochs", "2",
            "--head-epochs", "1", "--batch-size", "64", "--lr", "0.01", "--name", "t",
            "--output-dir", str(tmp_path), "--no-visualize", "--no-tensorboard"]
    assert train_module.main(args) == 0
    assert watch.changed == [False, True]  # backbone fixed for the head epoch, then trained


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
        assemble.make_network(config, 10)


def test_registry_has_pretrained_backbones():
    model = get_model("resnet50v2_imagenet", 5, image_size=32)
    assert isinstance(model, TransferNet) and model.arch == "resnet50v2"
    assert tuple(model(np.zeros((1, 32, 32, 3), "float32")).shape) == (1, 5)


def trial(weights_file, digits, **overrides):
    """One keras-tuner trial as the tuner runs it: ``HyperModel.build`` then ``fit``."""
    import keras_tuner as kt

    from tfresnet.tune import ResNetHyperModel

    config = TrainConfig(model="resnet18", weights=str(weights_file), image_size=32,
                         batch_size=32, lr=0.05, **overrides).validate()
    hypermodel = ResNetHyperModel(config, digits, configure(config), [], (0.05, 0.05))
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


def test_two_stage_tuner_trial_unfreezes_after_head_epochs(weights_file, digits):
    watch = BackboneWatch()
    hypermodel, hp, model = trial(weights_file, digits, transfer="two-stage", head_epochs=1,
                                  epochs=2)
    hypermodel.fit(hp, model, callbacks=[watch])
    assert watch.changed == [False, True]  # backbone fixed for the head epoch, then trained
