"""``python -m tfresnet.predict``: the command is `tfresnet.cli.predict`."""

from tfresnet.cli.predict import cli

if __name__ == "__main__":
    cli()
