"""scikit-learn's bundled 8x8 digits rendered as 32x32 RGB: the offline demo data set."""

import cv2
import numpy as np

TEST_SIZE = 360  # fixed: 20 % of the 1,797 images, stratified with seed 0


def load_digits_rgb():
    """Returns the same dict layout as `tfresnet.data.cifar.load_cifar` for the digits."""
    from sklearn.datasets import load_digits

    from tfresnet.data.splits import stratified_split

    digits = load_digits()
    # Pixels are 0..16; bicubic upscaling gives smooth 32 px strokes.
    small = (digits.images * (255.0 / 16.0)).astype(np.float32)
    big = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_CUBIC) for im in small])
    images = np.repeat(np.clip(big, 0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    train, test = stratified_split(labels, TEST_SIZE, seed=0)
    return {
        "x_train": images[train], "y_train": labels[train],
        "x_test": images[test], "y_test": labels[test],
        "coarse_train": None, "coarse_test": None,
        "class_names": [str(d) for d in range(10)], "coarse_names": None,
    }
