"""``python -m tfresnet.compare``: the command is `tfresnet.cli.compare`."""

from tfresnet.cli.compare import cli

if __name__ == "__main__":
    cli()
