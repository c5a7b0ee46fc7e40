"""tfresnet's version, and the names of earlier versions in one declared map.

Configs, ``--hparams`` files, run folders, the command line and ``.keras`` files written by
tfresnet 0.1 may hold names that 0.2 replaced; every reader maps them here, so a file of
any version loads, resumes and gives its old outputs (the fixture tests of 0.1 and 0.3).
One change is structural, not a name: the ``mean``, ``std``, ``image_size`` and
``eval_crop`` of a `Classifier` before 0.4 become its `ImagePreprocessor`
(``Classifier.from_config``). One is a default: a run folder's settings of 0.4 and before
hold ``warmup_epochs`` 2.0 for every schedule, which only cosine used
(`FORMER_DEFAULTS`).
"""

# Follows the on-disk formats: 0.2 renamed the saved model's parts, 0.3 added the photo
# models' evaluation crop to it, 0.4 put all preprocessing in its `ImagePreprocessor`
# (files of every version load). ``tfresnet.__version__``.
VERSION = "0.4.0"
# Setting values renamed in 0.2: setting -> {old value: today's}.
VALUE_ALIASES = {
    "stem": {"seed": "biased_valid"},
    "augment": {"seed": "shift_flip"},
}
# Settings whose default became one per run after 0.4 (None in today's configs), with the
# value runs of 0.4 and before saved: their warm-up of 2 epochs under every schedule, used
# by cosine alone, is what None gives (2 epochs for cosine, none for the others).
FORMER_DEFAULTS = {"warmup_epochs": 2.0}
# Constructor arguments renamed in 0.2 (.keras files): class -> {old argument: today's}.
ARGUMENT_ALIASES = {
    "Classifier": {"backbone": "network"},
}
# Constructor arguments added later, with the value that reproduces a file written before
# them: 0.2 made PyTorch's padding the default of the ResNets (`tfresnet.models.resnet`);
# 0.4 moved a pretrained backbone's resize and preprocessing into the `Classifier`'s
# `ImagePreprocessor` (`tfresnet.models.transfer.TransferNet`).
ADDED_ARGUMENTS = {"padding": "same", "takes_pixels": True}


def current(setting, value):
    """Today's name for ``value`` of ``setting`` (``value`` itself when it is current)."""
    if setting not in VALUE_ALIASES:
        return value
    return VALUE_ALIASES[setting].get(value, value)


def canonical(values):
    """A settings dict in the form run settings are compared in: old values replaced by
    today's, a `FORMER_DEFAULTS` value by None (so a 2-epoch warm-up given under a schedule
    other than cosine compares equal to none: a saved config cannot tell it from 0.4's
    default)."""
    return {k: None if k in FORMER_DEFAULTS and v == FORMER_DEFAULTS[k] else current(k, v)
            for k, v in values.items()}


def with_added_arguments(arguments, names):
    """``arguments`` of a file, with the `ADDED_ARGUMENTS` ``names`` it predates."""
    return {**{name: ADDED_ARGUMENTS[name] for name in names}, **arguments}


def current_arguments(class_name, arguments):
    """A constructor's keyword arguments with old names replaced by today's."""
    renamed = ARGUMENT_ALIASES.get(class_name, {})
    return {renamed.get(k, k): v for k, v in arguments.items()}
