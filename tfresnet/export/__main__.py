"""``python -m tfresnet.export``: the command is `tfresnet.cli.export`."""

from tfresnet.cli.export import cli

if __name__ == "__main__":
    cli()
