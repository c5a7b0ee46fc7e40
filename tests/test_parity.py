"""The ResNets equal their PyTorch references: stride-2 windows padded as PyTorch pads them
(checked against NumPy), whole networks against keras-hub's ResNet (which matches timm's
PyTorch models), and files written with the old Keras "same" padding keep their outputs."""

from pathlib import Path

import keras
import numpy as np
import pytest

from tfresnet.models import BasicBlock, Bottleneck, get_model

FIXTURES = Path(__file__).parent / "fixtures"


def torch_conv(x, kernel, stride):
    """PyTorch's Conv2d (padding k // 2 on every side), NHWC input, HWIO kernel."""
    size, pad = kernel.shape[0], kernel.shape[0] // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = (x.shape[1] - size) // stride + 1
    cols = (x.shape[2] - size) // stride + 1
    out = np.zeros((x.shape[0], rows, cols, kernel.shape[3]), "float64")
    for i in range(rows):
        for j in range(cols):
            window = x[:, i * stride:i * stride + size, j * stride:j * stride + size, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", window, kernel)
    return out


def torch_max_pool(x, size=3, stride=2):
    """PyTorch's MaxPool2d(3, 2, padding=1): -inf padding."""
    pad = size // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    rows = (x.shape[1] - size) // stride + 1
    cols = (x.shape[2] - size) // stride + 1
    return np.stack([np.stack([x[:, i * stride:i * stride + size,
                                 j * stride:j * stride + size, :].max(axis=(1, 2))
                               for j in range(cols)], 1) for i in range(rows)], 1)


def padded(pad, layer, x):
    return np.asarray(layer(x if pad is None else pad(x)), "float64")


@pytest.mark.parametrize("size", [8, 9])  # even sizes are where Keras' "same" differs
def test_strided_windows_pad_as_pytorch(size):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, size, size, 4)).astype("float32")
    basic = BasicBlock(4, 5, strides=2)
    bottleneck = Bottleneck(4, 4, strides=2)  # its 3x3 conv sees `filters` channels
    resnet = get_model("resnet18", 3, stem="imagenet", width=0.125)
    for block in (basic, bottleneck, resnet):
        block(np.zeros((1, 16, 16, 4 if block is not resnet else 3), "float32"))
    for pad, conv in ((basic.pad1, basic.conv1), (bottleneck.pad2, bottleneck.conv2)):
        np.testing.assert_allclose(padded(pad, conv, x), torch_conv(x, conv.kernel.numpy(), 2),
                                   atol=1e-5)
    image = x[..., :3]
    stem = resnet.stem_conv
    np.testing.assert_allclose(padded(resnet.stem_pad, stem, image),
                               torch_conv(image, stem.kernel.numpy(), 2), atol=1e-5)
    relu = np.maximum(x, 0)  # the stem's pool follows a ReLU: zero padding equals -inf there
    np.testing.assert_allclose(padded(resnet.stem_pool_pad, resnet.stem_pool, relu),
                               torch_max_pool(relu), atol=0)


def hub_layer_name(path):
    """Our variable path -> keras-hub ResNetBackbone layer (torchvision's layout)."""
    parts = path.split("/")
    if parts[-2] in ("stem_conv", "stem_bn"):
        return "conv1_conv" if parts[-2] == "stem_conv" else "conv1_bn"
    stage, block = parts[-3].removeprefix("stage").split("_block")
    branch = {"shortcut_conv": "0_conv", "shortcut_bn": "0_bn", "conv1": "1_conv",
              "bn1": "1_bn", "conv2": "2_conv", "bn2": "2_bn", "conv3": "3_conv",
              "bn3": "3_bn"}[parts[-2]]
    return f"stack{int(stage) - 1}_block{int(block) - 1}_{branch}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_whole_network_equals_keras_hubs_pytorch_layout_resnet(name):
    keras_hub = pytest.importorskip("keras_hub")
    ours = get_model(name, 10, stem="imagenet", include_top=False)
    blocks = [2, 2, 2, 2] if name == "resnet18" else [3, 4, 6, 3]
    hub = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=blocks,
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block" if name == "resnet18" else "bottleneck_block")
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    ours(x)
    rng = np.random.default_rng(1)
    for variable in ours.variables:  # random weights and BN statistics, copied by name
        value = rng.normal(0, 0.1, variable.shape)
        if variable.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, variable.shape)
        variable.assign(value.astype("float32"))
        kind = variable.path.split("/")[-1]
        target = hub.get_layer(hub_layer_name(variable.path))
        getattr(target, kind).assign(variable)
    np.testing.assert_allclose(ours(x, training=False), hub(x, training=False), atol=2e-5)


def test_a_file_with_the_old_padding_keeps_its_outputs():
    # Written before the padding option: ResNet-18 x0.125, ImageNet stem, Keras "same".
    model = keras.saving.load_model(FIXTURES / "resnet18_imagenet_stem_same_padding.keras")
    expected = np.load(FIXTURES / "resnet18_imagenet_stem_same_padding.npz")
    x = expected["images"].astype("float32") / 255
    assert model.padding == "same" and model.stem_pad is None
    np.testing.assert_allclose(model(x, training=False), expected["logits"], atol=1e-5)
    # The same weights with the exact padding give other logits: the field matters.
    exact = get_model("resnet18", 10, stem="imagenet", width=0.125)
    exact(x)
    exact.set_weights(model.get_weights())
    assert np.abs(np.asarray(exact(x, training=False)) - expected["logits"]).max() > 1e-2
