"""``python -m tfresnet.visualize``: the command is `tfresnet.cli.visualize`."""

from tfresnet.cli.visualize import cli

if __name__ == "__main__":
    cli()
