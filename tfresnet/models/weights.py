"""Pretrained weights into a transfer network: tfresnet runs as a source, and the loading.

`run_source` reads a tfresnet run given as ``--weights`` (its folder, or a ``.keras`` file
holding a `Classifier`); `load_pretrained` copies a run's, a preset's, ImageNet's or a
weights file's values into a `RunTransferNet` or `TransferNet`, refusing any that do not fit.
"""

import dataclasses
import functools
import warnings
from pathlib import Path

import keras

from tfresnet.errors import UserError
from tfresnet.models.backbones import (
    PRETRAINED,
    backbone_model,
    keras_file_config,
    load_preset,
    resolve_weights,
)
from tfresnet.models.registry import list_models
from tfresnet.models.transfer import RunTransferNet, TransferNet

RUN_MODEL = "best.keras"  # what a run folder given as --weights stands for (`RunFolder.BEST`)
BACKBONE_FILES = ("ResNet", "TransferNet")  # .keras files of a bare network: weights only


@dataclasses.dataclass(frozen=True)
class RunSource:
    """A tfresnet run to fine-tune from (`run_source`): what the new run takes from it.

    Args:
        path: its ``.keras`` file.
        model: the registry name of its network (``resnet18``, ``vgg16``,
            ``resnet50_imagenet``, ...).
        options: the network's ``stem`` and ``width``, those it has.
        image_size: the side the network ran at.
        pixels: its `ImagePreprocessor`'s scale, offset and channel order.
        network: the network's Keras config, head included (`RunTransferNet` drops it).
    """

    path: Path
    model: str
    options: dict
    image_size: int
    pixels: dict
    network: dict


def run_source(weights):
    """The `RunSource` of ``--weights`` when it is a tfresnet run: a run folder (its
    best.keras) or a ``.keras`` file holding a `Classifier`; None for anything else
    (``imagenet``, a preset, a weights file, a missing path, a bare ResNet's ``.keras``).

    Raises:
        UserError: a ``.keras`` file that is neither, or one that does not load.
    """
    if not weights or weights == "imagenet" or "://" in weights:
        return None
    path = Path(weights)
    if (path / RUN_MODEL).is_file():
        path = path / RUN_MODEL
    if path.suffix != ".keras" or not path.is_file():
        return None
    config = keras_file_config(path)
    if config is None:
        raise UserError(f"--weights {weights} is not a Keras archive (truncated or another "
                        "format); pass a run folder or its best.keras")
    if config.get("class_name") in BACKBONE_FILES:
        return None
    if config.get("class_name") != "Classifier":
        raise UserError(f"--weights {weights} holds a {config.get('class_name')}, not a model "
                        "trained by tfresnet.train; pass a run folder or its best.keras")
    return _read_run(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_run(path, modified):
    """The `RunSource` of the run model at ``path``, read once per version of the file
    (``modified``): checks and assembly ask again, and loading draws random numbers."""
    try:
        classifier = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad archive
        raise UserError(f"--weights {path} could not be loaded as a tfresnet model "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:160]})")
    network, preprocessor = classifier.network, classifier.preprocessor
    model, options = _registered(network, path)
    config = keras.saving.serialize_keras_object(network)
    config.pop("build_config", None)  # built by the new run's first call, headless
    config["config"].pop("dtype", None)  # the new run's precision policy decides
    return RunSource(Path(path), model, options,
                     int((preprocessor.network_size or preprocessor.input_size)[0]),
                     {"scale": preprocessor.scale, "offset": preprocessor.offset,
                      "channel_order": preprocessor.channel_order}, config)


def _registered(network, path):
    """``(registry name, {stem, width})`` of a run's network."""
    if isinstance(network, RunTransferNet):
        return _registered(network.feature_extractor, path)
    if isinstance(network, TransferNet):
        return backbone_model(network.arch), {"stem": "imagenet", "width": network.width}
    if network.name not in list_models():
        raise UserError(f"--weights {path} holds a {type(network).__name__} named "
                        f"{network.name!r}, which is no registered model")
    return network.name, {name: getattr(network, name) for name in ("stem", "width")
                          if hasattr(network, name)}


def load_pretrained(model, weights):
    """Loads pretrained weights into ``model.feature_extractor``: a tfresnet run's network
    without its head (`RunTransferNet`), or for a `TransferNet` a keras-hub preset or timm
    checkpoint (the model was built from its `preset_spec`), ``"imagenet"`` (Keras' download
    cache) or a local weights file. Weights of another architecture are refused, never
    partly loaded."""
    base = model.feature_extractor
    if isinstance(model, RunTransferNet):
        source = run_source(weights)
        if source is None:
            raise UserError(f"--weights {weights} is not a tfresnet run; pass a run folder "
                            "or its best.keras")
        network = keras.saving.load_model(source.path, compile=False).network
        head = {id(v) for v in network.fc.weights}
        _copy_weights([value for value, variable in zip(network.get_weights(), network.weights)
                       if id(variable) not in head], base, weights)
        return
    weights = resolve_weights(model.arch, weights)
    if model.preset is not None:
        source = load_preset(model.arch, weights, load_weights=True)
        _copy_weights(source.get_weights(), base, weights)
        return
    if weights == "imagenet":
        try:
            source = getattr(keras.applications, PRETRAINED[model.arch].application)(
                include_top=False, weights="imagenet",
                input_shape=(model.image_size, model.image_size, 3))
        except Exception as err:
            raise UserError(f"could not download ImageNet weights for {model.arch} "
                            f"({type(err).__name__}); download them elsewhere and pass "
                            "--weights PATH")
        _copy_weights(source.get_weights(), base, "the ImageNet download")
        return
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights file {path} does not exist")
    if path.suffix == ".keras":
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as err:
            raise UserError(f"--weights {path} is not a loadable .keras file ({err})")
        network = getattr(source, "network", source)
        source = getattr(network, "feature_extractor", network)
        values = source.get_weights()
        if getattr(source, "fc", None) is not None:  # a whole tfresnet ResNet: drop its head
            values = values[:-len(source.fc.weights)]
        _copy_weights(values, base, path)
        return
    if not path.name.endswith(".h5"):
        raise UserError(f"--weights must be 'imagenet', a .weights.h5, .h5 or .keras file. "
                        f"Received: {path}")
    expected = [tuple(v.shape) for v in base.weights]
    try:
        with warnings.catch_warnings():  # Keras warns per skipped layer before it raises
            warnings.simplefilter("ignore")
            base.load_weights(path)
    except Exception as err:
        reason = str(err).splitlines()[0][:200].rstrip(": ")
        raise UserError(f"--weights {path} does not fit {model.arch} ({reason})")
    if [tuple(v.shape) for v in base.weights] != expected:
        raise UserError(f"--weights {path} does not fit {model.arch}")


def _copy_weights(values, base, origin):
    shapes = [tuple(v.shape) for v in base.weights]
    if [tuple(v.shape) for v in values] != shapes:
        raise UserError(f"weights from {origin} do not fit this backbone ({len(values)} "
                        f"arrays vs {len(shapes)} expected, or different shapes; a bare "
                        "tfresnet ResNet must have the ImageNet stem and the same --width)")
    base.set_weights(values)
