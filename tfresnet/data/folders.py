"""Image-folder data sets: ``root/train/<class>/*``, optional ``root/val`` and ``root/test``.

Images are decoded with OpenCV (any format it reads), converted to RGB, resized to the
model's input size and held in memory as uint8, like CIFAR. A file OpenCV cannot decode is
skipped with one warning naming it; a class left with no images is an error.
"""

import sys
from pathlib import Path

import cv2
import numpy as np

from tfresnet.errors import UserError

MAX_PIXELS = 50_000_000  # refused before decoding (decompression bombs)


def _header_pixels(path):
    """Width x height from the file header alone (Pillow reads headers lazily), or None
    when Pillow does not know the format (OpenCV may still)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[0] * image.size[1]
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        return MAX_PIXELS + 1
    except Exception:  # unknown or broken header: leave the verdict to OpenCV
        return None


def read_image(path, image_size=None):
    """Reads an image file as RGB uint8, resized to ``(height, width)`` if given.

    Raises:
        UserError: the file is missing, not an image, or larger than `MAX_PIXELS`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image file: {path}")
    pixels = _header_pixels(path)
    if pixels is not None and pixels > MAX_PIXELS:
        raise UserError(f"{path} has more than the {MAX_PIXELS:,} pixels allowed; "
                        "downscale it first")
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"{path} is not an image OpenCV can read; remove or replace it")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image_size is not None and image.shape[:2] != tuple(image_size):
        image = cv2.resize(image, (image_size[1], image_size[0]), interpolation=cv2.INTER_AREA)
    return image


def _class_folders(split_dir):
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    return classes


def _read_split(split_dir, class_names, image_size, every_class=True):
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        if not every_class and not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        count = 0
        for path in files:
            try:
                images.append(read_image(path, image_size))
            except UserError as err:
                print(f"warning: {err} (skipped)", file=sys.stderr)
                continue
            labels.append(label)
            count += 1
        if count == 0:
            raise UserError(f"class folder {folder} has no readable images")
    return np.stack(images), np.asarray(labels, np.int32)


def load_image_folder(root, image_size=(64, 64)):
    """Loads ``root/train`` (or ``root`` itself when it holds the class folders), plus
    ``root/val`` and ``root/test`` when present.

    Returns:
        The dict layout of `tfresnet.data.cifar.load_cifar`, with ``x_val``/``y_val`` when
        ``root/val`` exists and ``x_test`` = ``None`` when ``root/test`` does not.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data set folder {root} does not exist")
    train_dir = root / "train" if (root / "train").is_dir() else root
    class_names = [p.name for p in _class_folders(train_dir)]
    arrays = {"class_names": class_names, "coarse_names": None, "coarse_train": None,
              "coarse_test": None, "x_test": None, "y_test": None}
    arrays["x_train"], arrays["y_train"] = _read_split(train_dir, class_names, image_size)
    for split in ("val", "test"):
        split_dir = root / split
        if train_dir is root or not split_dir.is_dir():
            continue
        unknown = {p.name for p in _class_folders(split_dir)} - set(class_names)
        if unknown:
            raise UserError(f"{split_dir} has classes not in train/: {', '.join(sorted(unknown))}")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_split(
            split_dir, class_names, image_size, every_class=False)
    return arrays
