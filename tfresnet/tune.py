"""``python -m tfresnet.tune``: the command is `tfresnet.cli.tune`."""

from tfresnet.cli.tune import cli

if __name__ == "__main__":
    cli()
