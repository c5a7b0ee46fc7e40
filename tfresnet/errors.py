"""One-line errors for user mistakes, and the wrapper every CLI runs under."""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence


class UserError(ValueError):
    """A mistake the user can fix: printed as one line, exit status 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad flag is a `UserError`, not a usage dump."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def require(module, extra):
    """Imports ``module`` from an optional extra, or a `UserError` naming the install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(err.name or module, extra)


def missing_extra(package, extra):
    """The one-line error for ``package`` of tfresnet's optional ``extra`` not installed."""
    return UserError(f"this needs {package.split('.')[0]}, part of tfresnet's [{extra}] extra: "
                     f"pip install \"tfresnet[{extra}]\" (pip install -e \".[{extra}]\" "
                     "in a checkout)")


def command_parser(module, doc):
    """The parser of ``python -m module``, its module docstring as the help text."""
    return ArgumentParser(prog=f"python -m {module}", description=doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int], argv=None) -> int:
    """Runs ``main(argv)``, turning a `UserError` into ``prog: error: message`` on stderr."""
    try:
        return main(argv) or 0
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
