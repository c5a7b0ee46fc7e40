"""``python -m tfresnet.explain``: the command is `tfresnet.cli.explain`."""

from tfresnet.cli.explain import cli

if __name__ == "__main__":
    cli()
