"""Image-folder data sets: ``root/train/<class>/**``, optional ``root/val`` and ``root/test``.

A folder is listed once (recursively, files with an image extension only) and streamed from
disk: `ImageFiles` holds a split's paths and decodes them on demand, in `tf.data`
(`tfresnet.data.pipeline`), so memory does not grow with the number of images. Each image
is decoded in the folder's `View` (`tfresnet.data.images`): ``small`` when every training
image is square and at most `SMALL_SIDE` px, ``photo`` otherwise (`choose_view`).
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np

from tfresnet.data.augment import PHOTO_REPLACED, parse_augment
from tfresnet.data.images import MAX_PIXELS, View, decode, find_images, header_size
from tfresnet.data.sources import Source
from tfresnet.errors import UserError

SMALL_SIDE = 64  # square images up to this side use the CIFAR-style pipeline
# Input side of a folder trained from scratch. Small images: 64 beat their own 32 px;
# photos: 64 matched 96 and beat 128 at a third of 128's time (experiments/README).
SCRATCH_SIZE = 64
VIEWS = ("auto", "small", "photo")
SHOWN_NAMES = 5  # undecodable files named in the one summary warning
_UNDECODABLE = set()  # files that failed to decode after their header passed: warned once


class ImageFiles:
    """The images of one split as files, decoded only when used: the folder counterpart of
    a uint8 ``(N, H, W, 3)`` array. ``files[i]`` decodes one image (evaluation view),
    ``files[indices]`` is another `ImageFiles`, `load` decodes them all."""

    def __init__(self, paths, view):
        self.paths = np.asarray(paths, dtype=str)
        self.view = view

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self), *self.view.size, 3)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.view.evaluate(self._decode(self.paths[key]))
        return ImageFiles(self.paths[key], self.view)

    def load(self):
        """Every image decoded, in the evaluation view (for small subsets)."""
        if not len(self):
            return np.zeros(self.shape, np.uint8)
        return self.decode_evaluation(range(len(self)))

    def decode_evaluation(self, indices):
        """Images ``indices`` in the evaluation view, as one uint8 batch."""
        return np.stack([self[int(i)] for i in indices])

    def decode_training(self, indices, seed, epoch):
        """Images ``indices`` in the training view; image ``i``'s crop in epoch ``epoch``
        depends on ``(seed, epoch, i)`` only, so any process replays it exactly."""
        return np.stack([
            self.view.train(self._decode(self.paths[i]),
                            np.random.default_rng([int(seed), int(epoch), int(i)]))
            for i in indices])

    def _decode(self, path):
        image = decode(path)
        if image is None:  # passed the header check but the data is broken
            if path not in _UNDECODABLE:
                _UNDECODABLE.add(path)
                print(f"warning: {path} could not be decoded; a black image stands in for "
                      "it", file=sys.stderr)
            image = np.zeros((*self.view.size, 3), np.uint8)
        return image


def _class_folders(split_dir):
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
    return classes


def _some(names):
    """The first `SHOWN_NAMES` of ``names``, and how many more there are."""
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return ", ".join(str(name) for name in names[:SHOWN_NAMES]) + more


def _list_split(split_dir, class_names, every_class=True):
    """``(paths, labels, header sizes, undecodable paths)`` of one split: the image files
    under each class folder, sub-folders included, in sorted order."""
    paths, labels, sizes, broken = [], [], [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        if not every_class and not folder.is_dir():
            continue
        count = 0
        for path in find_images(folder):
            size = header_size(path)
            if size is None or size[0] * size[1] > MAX_PIXELS:
                broken.append(path)
                continue
            paths.append(str(path))
            labels.append(label)
            sizes.append(size)
            count += 1
        if count == 0:
            raise UserError(f"class folder {folder} has no readable images; add some or "
                            "remove the folder")
    return paths, np.asarray(labels, np.int32), sizes, broken


def choose_view(kind, sizes):
    """``"small"`` when every training image is square and at most `SMALL_SIDE` px,
    else ``"photo"``; an explicit ``kind`` wins."""
    if kind != "auto":
        return kind
    small = all(w == h and w <= SMALL_SIDE for w, h in sizes)
    return "small" if small else "photo"


def load_image_folder(root, image_size=None, view="auto", crop_scale=None, crop_ratio=None,
                      eval_crop=None):
    """Lists ``root/train`` (or ``root`` itself when it holds the class folders), plus
    ``root/val`` and ``root/test`` when present. Decodes nothing.

    Args:
        image_size: ``(height, width)`` of the model input; None: `SCRATCH_SIZE`.
        view: ``"auto"``, ``"small"`` or ``"photo"`` (see `choose_view`).
        crop_scale, crop_ratio, eval_crop: the photo view's settings (None: `View`'s).

    Returns:
        A `Source` of `ImageFiles`: ``x_val``/``y_val`` when ``root/val`` exists,
        ``x_test`` = ``None`` when ``root/test`` does not, and ``skipped`` (files with an
        image extension that cannot be read).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data set folder {root} does not exist")
    train_dir = root / "train" if (root / "train").is_dir() else root
    class_names = [p.name for p in _class_folders(train_dir)]
    splits = {"train": _list_split(train_dir, class_names)}
    for split in ("val", "test"):
        split_dir = root / split
        if train_dir is root or not split_dir.is_dir():
            continue
        unknown = {p.name for p in _class_folders(split_dir)} - set(class_names)
        if unknown:
            raise UserError(f"{split_dir} has classes not in train/: {', '.join(sorted(unknown))}")
        splits[split] = _list_split(split_dir, class_names, every_class=False)

    kind = choose_view(view, splits["train"][2])
    size = tuple(image_size or (SCRATCH_SIZE, SCRATCH_SIZE))
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in
                (("crop_scale", crop_scale), ("crop_ratio", crop_ratio),
                 ("eval_crop", eval_crop)) if v is not None}
    files_view = View(kind, size, **settings)
    _warn_small(splits["train"][2], size)
    broken = [p for _, _, _, b in splits.values() for p in b]
    _warn_unreadable(broken)
    arrays = {"x_test": None, "y_test": None}
    for split, (paths, labels, _, _) in splits.items():
        arrays[f"x_{split}"] = ImageFiles(paths, files_view)
        arrays[f"y_{split}"] = labels
    return Source(**arrays, class_names=class_names, skipped=len(broken))


def load_labelled_folder(root, class_names, view):
    """Every image of a labelled folder, to score a model of ``class_names`` on: those of
    ``root/test/<class>/**`` when it exists, else those of every class folder (``root``'s,
    or its ``train/``'s and ``val/``'s). Decodes nothing.

    Returns:
        ``(ImageFiles in the model's view, labels indexing class_names, split)``, split
        ``"test"`` or ``"all"``.

    Raises:
        UserError: a class the model does not know, or no class folders.
    """
    root = Path(root).expanduser()
    if (root / "test").is_dir():
        split, folders = "test", [root / "test"]
    else:
        split = "all"
        folders = [root / name for name in ("train", "val") if (root / name).is_dir()] or [root]
    paths, labels, broken = [], [], []
    for folder in folders:
        unknown = sorted({p.name for p in _class_folders(folder)} - set(class_names))
        if unknown:
            raise UserError(f"{folder} has classes the model does not know: {_some(unknown)} "
                            f"(it knows {_some(list(class_names))}); remove them or score "
                            "a folder of its classes")
        found, found_labels, _, skipped = _list_split(folder, class_names, every_class=False)
        paths += found
        labels += found_labels.tolist()
        broken += skipped
    _warn_unreadable(broken)
    return ImageFiles(paths, view), np.asarray(labels, np.int32), split


def _warn_unreadable(broken):
    """One warning line for the files with an image extension that cannot be read."""
    if broken:
        print(f"warning: skipped {len(broken)} file(s) that are not readable images: "
              f"{_some(broken)}", file=sys.stderr)


def _warn_small(sizes, size):
    """One line when the images are smaller than the input, so they are upsampled."""
    shorter = np.array([min(w, h) for w, h in sizes])
    smaller = int(np.sum(shorter < min(size)))
    if smaller:
        print(f"note: {smaller} of {len(sizes)} training images have a shorter side below "
              f"the {size[0]}x{size[1]} input (median {int(np.median(shorter))} px); they are "
              "upsampled. Pass a smaller --image-size to avoid it", file=sys.stderr)


def training_images(augment, images):
    """``images`` as training streams them: a photo folder takes its random-resized crop
    only when the ``augment`` spec has an operation it replaces."""
    if not (isinstance(images, ImageFiles) and images.view.kind == "photo"):
        return images
    cropped = any(name in PHOTO_REPLACED for name, _ in parse_augment(augment))
    return ImageFiles(images.paths, dataclasses.replace(images.view, random_crop=cropped))
