"""One image file: finding and reading it, and the `View` that makes it a model input.

Images are decoded with OpenCV, which applies the EXIF orientation and turns grey, RGBA,
palette, 16-bit and CMYK files into 8-bit RGB. How a decoded image becomes a model input is
a `View`:

- ``small`` (CIFAR-like images): the image is resized to the input size, and training
  augments whole batches as for CIFAR (pad-and-crop, flip);
- ``photo`` (anything else): training takes a random-resized crop (Szegedy et al. 2015;
  torchvision's aspect-ratio range, a milder area range), evaluation a centre crop of
  ``eval_crop`` of the shorter side; the aspect ratio is kept in both.
"""

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tfresnet.errors import UserError

MAX_PIXELS = 50_000_000  # refused before decoding (decompression bombs)
# What torchvision's ImageFolder and Keras' image_dataset_from_directory read, together.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff", ".ppm", ".pgm", ".pnm"})


def header_size(path):
    """``(width, height)`` from the file header alone (Pillow reads headers lazily), or None
    when the header cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        return (MAX_PIXELS + 1, 1)
    except Exception:
        return None


def decode(path):
    """The file's pixels as RGB uint8 (EXIF orientation applied), or None when OpenCV
    cannot decode it."""
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _resize(image, height, width, shrink=cv2.INTER_AREA, grow=cv2.INTER_LINEAR):
    if image.shape[:2] == (height, width):
        return image
    smaller = height <= image.shape[0] and width <= image.shape[1]
    return cv2.resize(image, (width, height), interpolation=shrink if smaller else grow)


@dataclasses.dataclass(frozen=True)
class View:
    """How a decoded image becomes a ``size`` model input (see the module docstring).

    Args:
        kind: ``"small"`` or ``"photo"``.
        size: ``(height, width)`` of the model input.
        crop_scale: photo training: range of the crop's area, as a fraction of the image
            (torchvision's 0.08 is for long ImageNet training; 0.35 did better in short
            transfer runs, experiments/README "Image folders").
        crop_ratio: photo training: range of the crop's aspect ratio (width / height).
        eval_crop: photo evaluation: the centre crop's side as a fraction of the shorter
            side (torchvision's resize-256, crop-224 is 0.875).
        random_crop: photo training: False trains on the evaluation view (an
            augmentation spec without ``crop`` or ``shift``).
    """

    kind: str
    size: tuple
    crop_scale: tuple = (0.35, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    eval_crop: float = 0.875
    random_crop: bool = True

    def evaluate(self, image):
        """The deterministic view: resized (small) or centre-cropped (photo)."""
        height, width = self.size
        if self.kind == "small":  # INTER_AREA both ways: the pipeline CIFAR folders had
            return _resize(image, height, width, grow=cv2.INTER_AREA)
        rows, cols = image.shape[:2]
        side = self.eval_crop * min(rows / height, cols / width)  # input pixel -> image px
        crop_h, crop_w = max(1, round(height * side)), max(1, round(width * side))
        top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
        return _resize(image[top:top + crop_h, left:left + crop_w], height, width)

    def train(self, image, rng):
        """The augmented view: a random-resized crop (photo) or the evaluation view
        (small; its augmentation runs on whole batches)."""
        if self.kind == "small" or not self.random_crop:
            return self.evaluate(image)
        top, left, crop_h, crop_w = random_crop_box(image.shape[:2], rng, self.crop_scale,
                                                    self.crop_ratio)
        return _resize(image[top:top + crop_h, left:left + crop_w], *self.size)


def evaluation_view(image_size, eval_crop=None):
    """The `View` a model of input ``image_size`` sees images in: a centre crop of
    ``eval_crop`` (a model trained on photos), else the whole image resized."""
    if eval_crop:
        return View("photo", tuple(image_size), eval_crop=eval_crop)
    return View("small", tuple(image_size))


def random_crop_box(shape, rng, scale, ratio, attempts=10):
    """``(top, left, height, width)`` of a random crop covering ``scale`` of the area with a
    log-uniform aspect ratio in ``ratio``; after ``attempts`` misses, the largest centred
    crop whose ratio is clamped to the range."""
    rows, cols = shape
    area = rows * cols
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        width = round(math.sqrt(target * aspect))
        height = round(math.sqrt(target / aspect))
        if 0 < width <= cols and 0 < height <= rows:
            return (int(rng.integers(0, rows - height + 1)),
                    int(rng.integers(0, cols - width + 1)), height, width)
    aspect = min(max(cols / rows, ratio[0]), ratio[1])
    width, height = (cols, round(cols / aspect)) if cols / rows <= aspect else (
        round(rows * aspect), rows)
    width, height = min(width, cols), min(height, rows)
    return (rows - height) // 2, (cols - width) // 2, height, width


def read_image(path, view=None):
    """Reads an image file as RGB uint8; with a `View` (a model's ``view``), as the model
    sees it: resized, or for a photo model centre-cropped first.

    Raises:
        UserError: the file is missing, not an image, or larger than `MAX_PIXELS`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such image file: {path}")
    size = header_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise UserError(f"{path} has more than the {MAX_PIXELS:,} pixels allowed; "
                        "downscale it first")
    image = decode(path)
    if image is None:
        raise UserError(f"{path} is not an image OpenCV can read; remove or replace it")
    return image if view is None else view.evaluate(image)


def is_image_file(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(folder):
    """The image files under ``folder``, sub-folders included, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(p) and p.is_file())

