"""The 8x8 handwritten digits rendered as 32x32 RGB: the offline demo data set.

``digits.npz`` holds the 1,797 images (pixels 0..16) and labels of the UCI "Optical
Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; licensed CC BY 4.0
by the UCI Machine Learning Repository), the same copy scikit-learn bundles as
``load_digits``. It ships with tfresnet so that the demo needs no optional package.
"""

from pathlib import Path

import cv2
import numpy as np

from tfresnet.data.sources import Source, register_source
from tfresnet.data.splits import stratified_split

TEST_SIZE = 360  # fixed: 20 % of the 1,797 images, stratified with seed 0
DIGITS_FILE = Path(__file__).with_name("digits.npz")


@register_source("digits")
def load_digits_rgb(data_dir=None, download=True):
    """scikit-learn's 1,797 handwritten digits (shipped in the package, 8x8 upscaled to
    32x32 RGB) as a `Source`, with a fixed stratified test split; nothing to download."""
    with np.load(DIGITS_FILE) as stored:
        small, labels = stored["images"], stored["labels"].astype(np.int32)
    # Pixels are 0..16; bicubic upscaling gives smooth 32 px strokes.
    small = small.astype(np.float32) * (255.0 / 16.0)
    big = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_CUBIC) for im in small])
    images = np.repeat(np.clip(big, 0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    train, test = stratified_split(labels, TEST_SIZE, seed=0)
    return Source(x_train=images[train], y_train=labels[train], x_test=images[test],
                  y_test=labels[test], class_names=[str(d) for d in range(10)])
