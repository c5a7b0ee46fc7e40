"""``python -m tfresnet.evaluate``: the command is `tfresnet.cli.evaluate`."""

from tfresnet.cli.evaluate import cli

if __name__ == "__main__":
    cli()
