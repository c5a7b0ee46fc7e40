"""``python -m tfresnet.train``: the command is `tfresnet.cli.train`."""

from tfresnet.cli.train import cli

if __name__ == "__main__":
    cli()
