"""The ResNets equal their PyTorch references: stride-2 windows padded as PyTorch pads them
(checked against NumPy), whole networks against keras-hub's ResNet (which matches timm's
PyTorch models), files written with the old Keras "same" padding keep their outputs, and
the PyTorch twin (`tfresnet.training.torch_twin`) is the same CIFAR ResNet-18."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tfresnet.cli import compare
from tfresnet.models import BasicBlock, Bottleneck, get_model

FIXTURES = Path(__file__).parent / "fixtures"
TORCH_REFERENCE = Path(__file__).parents[1] / "experiments" / "torch_reference.py"


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
    want = np.asarray(hub(x, training=False))  # random weights: activations reach ~1e7
    np.testing.assert_allclose(ours(x, training=False), want, atol=1e-5 * np.abs(want).max())


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


def torch_resnet(bottleneck, stage_blocks):
    """torchvision's ResNet layout (v1.5: stride on the bottleneck's 3x3), written out with
    ``torch.nn`` and returning the last feature map."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, inp, filters, stride):
            super().__init__()
            out = filters * (4 if bottleneck else 1)
            if bottleneck:
                self.conv1 = nn.Conv2d(inp, filters, 1, bias=False)
                self.conv2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)
                self.conv3 = nn.Conv2d(filters, out, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(out)
            else:
                self.conv1 = nn.Conv2d(inp, filters, 3, stride, 1, bias=False)
                self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(filters), nn.BatchNorm2d(filters)
            self.downsample = None
            if stride != 1 or inp != out:
                self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if bottleneck:
                y = self.bn3(self.conv3(torch.relu(y)))
            shortcut = x if self.downsample is None else self.downsample(x)
            return torch.relu(y + shortcut)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inp, layers = 64, []
            for stage, count in enumerate(stage_blocks):
                filters = 64 * 2**stage
                blocks = []
                for index in range(count):
                    blocks.append(Block(inp, filters, 2 if stage and not index else 1))
                    inp = filters * (4 if bottleneck else 1)
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    return Net().eval()


# Our variable kind -> PyTorch's parameter or buffer name.
TORCH_SUFFIX = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
                "moving_mean": "running_mean", "moving_variance": "running_var"}


def torch_state(variables, key):
    """Our variables as a PyTorch state dict under ``key(path)``: conv kernels HWIO -> OIHW,
    dense kernels (in, out) -> (out, in)."""
    import torch

    state = {}
    for variable in variables:
        value = np.asarray(variable)
        axes = {4: (3, 2, 0, 1), 2: (1, 0)}.get(value.ndim)
        value = value if axes is None else np.ascontiguousarray(value.transpose(axes))
        state[key(variable.path)] = torch.from_numpy(value)
    return state


def torch_key(path):
    """Our variable path -> torchvision's state-dict key."""
    *_, layer, kind = path.split("/")
    suffix = TORCH_SUFFIX[kind]
    if layer.startswith("stem_"):
        return f"{'conv1' if layer == 'stem_conv' else 'bn1'}.{suffix}"
    stage, block = path.split("/")[-3].removeprefix("stage").split("_block")
    name = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(layer, layer)
    return f"layer{stage}.{int(block) - 1}.{name}.{suffix}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_whole_network_equals_pytorch_with_copied_weights(name):
    torch = pytest.importorskip("torch")
    reference = torch_resnet(name == "resnet50", (2, 2, 2, 2) if name == "resnet18"
                             else (3, 4, 6, 3))
    ours = get_model(name, 10, stem="imagenet", include_top=False)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    ours(x)
    rng = np.random.default_rng(1)
    for variable in ours.variables:
        kind = variable.path.split("/")[-1]
        if kind in ("gamma", "moving_variance"):  # BN away from its initial values
            variable.assign(rng.uniform(0.5, 1.0, variable.shape).astype("float32"))
        elif kind in ("beta", "moving_mean"):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    # The reference's BN step counters stay; every other entry is ours.
    reference.load_state_dict({**reference.state_dict(),
                               **torch_state(ours.variables, torch_key)})
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours(x, training=False), expected.transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)


def twin_key(path):
    """Our CIFAR ResNet-18's variable path -> the key of the PyTorch twin's."""
    *_, layer, kind = path.split("/")
    suffix = TORCH_SUFFIX[kind]
    if layer in ("stem_conv", "stem_bn", "fc"):
        return f"{ {'stem_conv': 'stem.0', 'stem_bn': 'stem.1'}.get(layer, layer)}.{suffix}"
    stage, block = path.split("/")[-3].removeprefix("stage").split("_block")
    name = {"shortcut_conv": "short.0", "shortcut_bn": "short.1"}.get(layer, layer)
    return f"blocks.{2 * (int(stage) - 1) + int(block) - 1}.{name}.{suffix}"


@pytest.mark.slow
def test_pytorch_twin_is_the_same_network_and_writes_a_run_compare_reads(cifar10_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from tfresnet.training.torch_twin import ResNet18

    twin = ResNet18(10, width=0.125).eval()
    ours = get_model("resnet18", 10, width=0.125)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    ours(x)
    assert ours.count_params() == sum(p.numel() for p in twin.state_dict().values()
                                      if p.dtype == torch.float32)
    twin.load_state_dict({**twin.state_dict(), **torch_state(ours.variables, twin_key)})
    with torch.inference_mode():
        theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(ours(x, training=False)), theirs, atol=1e-4)

    # One epoch of the recipe on tfresnet's split; the run folder is one compare reads.
    run = tmp_path / "twin"
    done = subprocess.run([sys.executable, TORCH_REFERENCE, "train", "--data-dir", cifar10_dir[0],
                           "--width", "0.0625", "--epochs", "1", "--batch-size", "64",
                           "--out", run], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1 and summary["train_images_per_second"] > 0
    assert compare.main([str(run), "--out-dir", str(tmp_path / "cmp")]) == 0
    assert "resnet18 (PyTorch twin)" in (tmp_path / "cmp" / "comparison.md").read_text()
