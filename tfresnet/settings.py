"""Settings views: how a part of tfresnet declares its settings and checks their choices.

A view is a small frozen dataclass of `setting` fields, kept beside the code that reads it
(`tfresnet.optim.settings.OptimizerSettings`, ...). `tfresnet.config.TrainConfig` is made
of every view's fields, so declaring a field in a view adds its flag and its JSON key.
"""

import dataclasses
import enum

from tfresnet.errors import UserError


def setting(default, help, group, choices=None):
    """A field of a settings view: its default, the help line of its flag, the flag's group
    in ``--help`` and, for a value that is one of a few, its choices."""
    metadata = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name):
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


def default_of(field):
    """The default value of a dataclass field."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def plain(value):
    """``value`` as JSON and the command line write it: an enum as its string."""
    return value.value if isinstance(value, enum.Enum) else value


def choice_error(name, choices, value):
    """The one-line error for a ``value`` of setting ``name`` that is none of ``choices``."""
    return UserError(f"{flag(name)} must be one of {', '.join(choices)}. Received: {value!r}")


class Settings:
    """What the views and `TrainConfig` share: which settings the user changed, and the
    check of the choices."""

    def is_set(self, name):
        """Whether setting ``name`` differs from its default: how checks tell a value the
        user chose (settings hold values, not which flags were given)."""
        return getattr(self, name) != default_of(self.__dataclass_fields__[name])

    def check_choices(self):
        """A one-line `UserError` for a value that is none of its setting's choices."""
        for field in dataclasses.fields(self):
            choices, value = field.metadata["choices"], plain(getattr(self, field.name))
            if choices and value not in choices:
                raise choice_error(field.name, choices, value)
