"""The model registry: one `register_model` decorator per network factory.

A factory ``factory(num_classes, **options)`` returns a network that maps normalised images
to logits (the `ClassifierHead` contract: ``feature_map`` -> ``pool`` -> ``drop`` -> ``fc``,
which Grad-CAM and the feature baselines read). Training passes only the model options the
user set (``--width``, ``--stem``, ``--dropout``, ``--zero-init-residual``), so a model's own
defaults hold and an option it does not take is refused, as timm's ``create_model`` does.
"""

from tfresnet.errors import UserError

_REGISTRY = {}


def register_model(name):
    """Registers the decorated factory under ``name``; returns it unchanged. A name that
    is taken is refused (as torchvision does): a second model must not silently replace
    the first.

    Example:
        >>> @register_model("tiny_cnn")
        ... def tiny_cnn(num_classes, width=1.0):
        ...     return SmallCNN(num_classes, width=width, name="tiny_cnn")
    """
    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered (by "
                             f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}); "
                             "choose another name")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_models():
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name, num_classes, **options):
    """Builds the registered model ``name`` with ``num_classes`` logits.

    Args:
        name: one of `list_models()`.
        num_classes: number of classes.
        **options: passed to the model's factory (``stem``, ``width``, ``dropout`` ...).

    Raises:
        UserError: for an unknown name or an option the model does not take.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    try:
        return _REGISTRY[name](num_classes, **options)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"bad options for model {name!r}: {err}") from None
