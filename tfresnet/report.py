"""``python -m tfresnet.report``: the command is `tfresnet.cli.report`."""

from tfresnet.cli.report import cli

if __name__ == "__main__":
    cli()
