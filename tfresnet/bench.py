"""``python -m tfresnet.bench``: the command is `tfresnet.cli.bench`."""

from tfresnet.cli.bench import cli

if __name__ == "__main__":
    cli()
