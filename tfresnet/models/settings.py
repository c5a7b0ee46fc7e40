"""The network's and the transfer's settings (`ModelSettings`, `TransferSettings`, `Transfer`)."""

import dataclasses
import enum
from pathlib import Path

from tfresnet.errors import UserError
from tfresnet.models.backbones import (
    ARCHITECTURES,
    backbone_input_size,
    is_preset,
    parse_model_name,
    pretrained,
    resolve_weights,
)
from tfresnet.models.registry import list_models
from tfresnet.models.resnet import STEMS
from tfresnet.models.weights import run_source
from tfresnet.settings import Settings, flag, setting


@dataclasses.dataclass(frozen=True)
class ModelSettings(Settings):
    """The network a run trains: its registry name and the options the user sets on it."""

    model: str = setting("resnet18", "registry name (see --help of tfresnet.models)", "model")
    stem: str = setting("cifar", "ResNet stem", "model", list(STEMS))
    width: float = setting(1.0, "channel width multiplier", "model")
    dropout: float = setting(0.0, "dropout before the classifier", "model")
    zero_init_residual: bool = setting(False, "zero the last BN gamma of each block", "model")

    @property
    def architecture(self):
        """The model's name without its pretrained suffix (``resnet50`` of
        ``resnet50_imagenet``)."""
        return parse_model_name(self.model)[0]

    @property
    def imagenet_name(self):
        """Whether the model names a pretrained backbone (``resnet50_imagenet``)."""
        return parse_model_name(self.model)[1]

    @property
    def options(self):
        """The options the user set (those not at their defaults), as the model's keyword
        arguments: the model's own defaults hold for the rest, and a model that does not
        take an option refuses it (`tfresnet.models.registry`)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "model" and self.is_set(field.name)}

    def validate(self):
        """Raises a one-line `UserError` for settings no network can use; returns self."""
        self.check_choices()
        if self.width <= 0:
            raise UserError(f"--width must be positive. Received: {self.width}")
        if self.model not in list_models():
            raise UserError(f"unknown model {self.model!r}; choose one of "
                            f"{', '.join(list_models())}")
        return self


class Transfer(enum.Enum):
    """``--transfer``: how a run starts from a pretrained backbone; JSON and the flag hold
    its string (`tfresnet.config`)."""

    NONE = "none"  # a registered model from random weights
    SCRATCH = "scratch"  # the pretrained architecture, from random weights
    FROZEN = "frozen"  # the backbone fixed, a new head trained
    FINETUNE = "finetune"  # everything trained, the backbone's updates scaled
    TWO_STAGE = "two-stage"  # the head alone first, then as finetune

    def __str__(self):
        return self.value

    @property
    def needs_weights(self):
        """Whether the mode starts from the ``--weights`` it is given."""
        return self in (Transfer.FROZEN, Transfer.FINETUNE, Transfer.TWO_STAGE)

    @property
    def scales_backbone(self):
        """Whether the backbone's updates are scaled by ``--backbone-lr``."""
        return self in (Transfer.FINETUNE, Transfer.TWO_STAGE)

    @property
    def trains_head_first(self):
        """Whether the head trains alone for ``--head-epochs`` first."""
        return self is Transfer.TWO_STAGE


# Transfer settings that act only in some modes.
ONLY_IN_MODES = {"backbone_lr": (Transfer.FINETUNE, Transfer.TWO_STAGE),
                 "head_epochs": (Transfer.TWO_STAGE,)}


@dataclasses.dataclass(frozen=True)
class TransferSettings(Settings):
    """Whether and how a run starts from pretrained weights: ImageNet's, a preset's, a
    file's or a tfresnet run's (`run`)."""

    transfer: Transfer = setting(Transfer.NONE, "pretrained backbone mode (scratch: same net, "
                                 "random weights)", "transfer", [mode.value for mode in Transfer])
    weights: str | None = setting(
        None, "'imagenet', a keras-hub preset (name, hf:// or kaggle:// handle, directory), "
        "a timm checkpoint directory, or a .weights.h5/.h5/.keras file", "transfer")
    backbone_lr: float = setting(0.1, "backbone LR multiplier (finetune, two-stage)",
                                 "transfer")
    head_epochs: int = setting(3, "two-stage: epochs training only the head", "transfer")

    @property
    def run(self):
        """The tfresnet run ``--weights`` names (`tfresnet.models.weights.RunSource`), or
        None."""
        return run_source(self.weights)

    def validate(self):
        """Raises a one-line `UserError` for settings no transfer can use, whatever the
        network; returns self."""
        self.check_choices()
        mode = self.transfer
        if mode is Transfer.SCRATCH and self.weights:
            raise UserError("--transfer scratch trains from random weights; drop --weights")
        if mode is Transfer.NONE and self.weights:
            raise UserError("--weights loads a pretrained backbone; add --transfer frozen, "
                            "finetune or two-stage, or drop --weights")
        if mode.needs_weights and not self.weights:
            raise UserError(f"--transfer {mode} needs --weights (imagenet, a preset, a file or "
                            "a tfresnet run)")
        if self.head_epochs < 0 or self.backbone_lr < 0:
            raise UserError("--head-epochs and --backbone-lr must be >= 0")
        for name, modes in ONLY_IN_MODES.items():
            if self.is_set(name) and mode not in modes:
                raise UserError(f"{flag(name)} acts only with --transfer "
                                f"{' or '.join(map(str, modes))}, not {mode}; drop it")
        return self

    def taken_from_run(self, model):
        """The model, stem and width of the tfresnet run ``--weights`` names, which a run
        takes so that the user need not repeat them ({} for other weights). One of
        ``model``'s (`ModelSettings`) given that contradicts the run is a one-line
        `UserError` (a default counts as not given)."""
        run = self.run
        if run is None:
            return {}
        found = {"model": run.model, **run.options}
        for name in ("model", "stem", "width"):
            given = getattr(model, name)
            if model.is_set(name) and name not in found:
                raise UserError(f"{flag(name)} does not apply to the {run.model} of --weights "
                                f"{self.weights}; drop {flag(name)}")
            if model.is_set(name) and given != found[name]:
                has = f"is a {run.model}" if name == "model" else f"has {name} {found[name]}"
                raise UserError(f"{flag(name)} {given} contradicts --weights {self.weights}, "
                                f"whose network {has}; drop {flag(name)} (the run takes it "
                                "from there)")
        return found

    def check_network(self, model):
        """A one-line `UserError` for a transfer the network of ``model`` (`ModelSettings`,
        validated, with what it took from a run) cannot make: no pretrained variant,
        weights that do not exist, or an option the pretrained network would ignore."""
        if self.transfer is Transfer.NONE:
            return
        run = self.run
        if run is None and model.architecture not in ARCHITECTURES:
            raise UserError(f"no pretrained variant of {model.model!r}; --transfer works with "
                            f"{', '.join(ARCHITECTURES)} (and their _imagenet names), and "
                            "with any model from a tfresnet run folder given as --weights")
        if (self.weights and self.weights != "imagenet" and not is_preset(self.weights)
                and not Path(self.weights).is_file()):
            raise UserError(f"--weights file {self.weights} does not exist; pass 'imagenet', "
                            "a tfresnet run folder, a keras-hub preset name, an hf:// or "
                            "kaggle:// handle, a preset or timm directory, or a "
                            ".weights.h5/.h5/.keras file")
        self._refuse_unused_by_backbone(model, run)

    def _refuse_unused_by_backbone(self, model, run):
        """A one-line `UserError` for an option of ``model`` given that the pretrained
        network (a `TransferNet`, or the tfresnet ``run``'s) would ignore: it keeps its own
        initialisation; an ImageNet backbone has the ImageNet stem, and only tfresnet's own
        ResNet-18/34 take ``--width``."""
        mode = f"--transfer {self.transfer}"
        if model.is_set("zero_init_residual"):
            raise UserError(f"--zero-init-residual does not apply to {mode}: the backbone "
                            "keeps its own initialisation; drop it")
        if run is not None:
            return
        if model.is_set("stem") and model.stem != "imagenet":
            raise UserError(f"--stem {model.stem} does not apply to {mode}: a pretrained "
                            "backbone has the ImageNet stem; drop --stem")
        arch = model.architecture
        own = (pretrained(arch).application is None
               and not is_preset(resolve_weights(arch, self.weights)))
        if model.is_set("width") and not own:
            raise UserError(f"--width applies to the resnet18/resnet34 backbones tfresnet "
                            f"builds (from a weights file or --transfer scratch), not to {arch} "
                            "from Keras Applications or a preset; drop --width")

    def input_size(self, architecture):
        """The input side of the pretrained network: a tfresnet run's, else the backbone of
        ``architecture``'s (`backbone_input_size`); None without one (the data's own)."""
        if self.transfer is Transfer.NONE:
            return None
        run = self.run
        if run is not None:
            return run.image_size
        return backbone_input_size(architecture, self.weights)
