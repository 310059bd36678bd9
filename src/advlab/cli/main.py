"""Entry point of the ``advlab`` command."""

from __future__ import annotations

import click

from advlab import __version__
from advlab.cli import attack_cmd, data_cmd, list_cmd, train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advlab")
def cli() -> None:
    """advlab: attack, defend and benchmark machine-learning models with adversarial examples."""


for _module in (data_cmd, train_cmd, attack_cmd, list_cmd):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Runs the ``advlab`` command."""
    cli()


if __name__ == "__main__":
    main()
