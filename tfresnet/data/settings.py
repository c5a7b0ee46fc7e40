"""The data's and the augmentation's settings (`DataSettings`)."""

import dataclasses

from tfresnet.data.augment import AUGMENT_PLACES, parse_augment
from tfresnet.data.folders import VIEWS
from tfresnet.data.sources import SOURCES
from tfresnet.errors import UserError
from tfresnet.settings import Settings, flag, setting

PHOTO_SETTINGS = ("crop_scale", "crop_ratio", "eval_crop")  # of `folders.View`


@dataclasses.dataclass(frozen=True)
class DataSettings(Settings):
    """The data set of a run, how an image folder is decoded, and the augmentation
    (`tfresnet.data.load_dataset`, `tfresnet.data.augment`)."""

    dataset: str = setting("cifar100", "cifar100, cifar10, digits or an image folder", "data")
    data_dir: str | None = setting(None, "folder with (or for) the CIFAR pickles", "data")
    val_size: int | None = setting(
        None, "validation images held out of training (default 10%%; 0 = none)", "data")
    image_size: int | None = setting(
        None, "model input side: image folders are decoded at it, pretrained backbones "
        "resize to it inside the model (default: the backbone's, 224 for the ImageNet "
        "ResNets; 64 for image folders from scratch)", "data")
    preprocess: str = setting(
        "auto", "image folders: 'small' resizes and augments as CIFAR, 'photo' takes random-"
        "resized crops to train and centre crops to evaluate (auto: small when every "
        "training image is square and at most 64 px)", "data", list(VIEWS))
    crop_scale: list[float] = setting([0.35, 1.0], "photo: area range of the random-resized "
                                      "crop, as fractions of the image (torchvision's 0.08 "
                                      "lost 1.3-2 points in short transfer runs)", "data")
    crop_ratio: list[float] = setting([0.75, 4 / 3], "photo: aspect-ratio range (width / "
                                      "height) of the random-resized crop", "data")
    eval_crop: float = setting(0.875, "photo: centre crop to evaluate, as a fraction of the "
                               "shorter side", "data")
    augment: str = setting("standard", "preset (none, shift_flip, standard, strong) or spec",
                           "data")
    augment_on: str = setting("auto", "where augmentation runs (auto: device on a GPU)",
                              "data", list(AUGMENT_PLACES))

    def validate(self):
        """Raises a one-line `UserError` for data and augmentation settings no run can use,
        before anything is loaded or downloaded; returns self."""
        self.check_choices()
        if self.image_size is not None and self.image_size < 8:
            raise UserError(f"--image-size must be at least 8. Received: {self.image_size}")
        scale, ratio = self.crop_scale, self.crop_ratio
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise UserError("--crop-scale takes two fractions 0 < low <= high <= 1. "
                            f"Received: {self.crop_scale}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise UserError("--crop-ratio takes two ratios 0 < low <= high. "
                            f"Received: {self.crop_ratio}")
        if not 0 < self.eval_crop <= 1:
            raise UserError(f"--eval-crop must be in (0, 1]. Received: {self.eval_crop}")
        parse_augment(self.augment)
        self._refuse_unused()
        return self

    def _refuse_unused(self):
        """A one-line `UserError` for a setting given (not its default) that the data set
        would ignore: an image folder's preprocessing for a registered source, the photo
        view's crops under ``--preprocess small``, ``--data-dir`` for an image folder."""
        crops = [flag(name) for name in PHOTO_SETTINGS if self.is_set(name)]
        if self.dataset in SOURCES:
            given = (["--preprocess"] if self.is_set("preprocess") else []) + crops
            if given:
                raise UserError(f"{_flags(given)} only on image folders, and {self.dataset} "
                                f"is not one; drop {_them(given)}")
            return
        if crops and self.preprocess == "small":
            raise UserError(f"{_flags(crops)} only on the photo view, which --preprocess small "
                            f"does not use; drop {_them(crops)} or pass --preprocess photo")
        if self.data_dir is not None:
            raise UserError(f"--data-dir locates a registered data set's files; the image "
                            f"folder {self.dataset} does not use it: drop it")


def _flags(flags):
    """``flags`` joined, with the verb that agrees."""
    return " and ".join(flags) + (" act" if len(flags) > 1 else " acts")


def _them(flags):
    return "them" if len(flags) > 1 else "it"
