"""How far tfresnet's ResNet-18/50 (ImageNet stem) are from PyTorch's layout, with the new
PyTorch padding and with Keras' old "same": the same weights are copied into keras-hub's
`ResNetBackbone` (which loads timm's checkpoints) and the logits of 224 px inputs compared.
Kernels keep their He initialisation; BN statistics and affine terms are randomised.

    python experiments/padding_parity.py
"""

import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_parity import hub_layer_name  # noqa: E402

from tfresnet.models import get_model  # noqa: E402

LAYOUTS = {"resnet18": ([2, 2, 2, 2], "basic_block", 512),
           "resnet50": ([3, 4, 6, 3], "bottleneck_block", 2048)}


def randomise_bn(variable, rng):
    kind = variable.path.split("/")[-1]
    if kind in ("gamma", "moving_variance"):
        variable.assign(rng.uniform(0.5, 1.0 if kind == "gamma" else 1.5, variable.shape))
    elif kind in ("beta", "moving_mean"):
        variable.assign(rng.normal(0, 0.1, variable.shape))


def main():
    x = np.random.default_rng(0).normal(size=(4, 224, 224, 3)).astype("float32")
    for name, (blocks, block_type, features) in LAYOUTS.items():
        rng = np.random.default_rng(1)
        hub = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=blocks,
            stackwise_num_strides=[1, 2, 2, 2], block_type=block_type)
        nets = {padding: get_model(name, 1000, stem="imagenet", padding=padding)
                for padding in ("torch", "same")}
        for net in nets.values():
            net(x[:1])
        exact = nets["torch"]
        for variable in exact.variables:
            if variable.path.split("/")[-2] == "fc":
                continue
            randomise_bn(variable, rng)
            layer = hub.get_layer(hub_layer_name(variable.path))
            getattr(layer, variable.path.split("/")[-1]).assign(variable)
        exact.fc.set_weights([rng.normal(0, 0.05, (features, 1000)).astype("float32"),
                              np.zeros(1000, "float32")])
        nets["same"].set_weights(exact.get_weights())
        pooled = np.asarray(keras.ops.mean(hub(x, training=False), axis=(1, 2)))
        reference = pooled @ exact.fc.kernel.numpy()
        for padding, net in nets.items():
            diff = np.abs(np.asarray(net(x, training=False)) - reference).max()
            print(f"{name} padding={padding}: max |logit difference| {diff:.2g} "
                  f"(largest |logit| {np.abs(reference).max():.3g})")


if __name__ == "__main__":
    main()
