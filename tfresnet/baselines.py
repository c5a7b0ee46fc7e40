"""``python -m tfresnet.baselines``: the command is `tfresnet.cli.baselines`."""

from tfresnet.cli.baselines import cli

if __name__ == "__main__":
    cli()
