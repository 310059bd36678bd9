"""Entry point of the ``advlab`` command."""

from __future__ import annotations

import os

import click

from advlab import __version__
from advlab._allocator import keep_freed_memory
from advlab.cli import attack_cmd, data_cmd, list_cmd, train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advlab")
def cli() -> None:
    """advlab: attack, defend and benchmark machine-learning models with adversarial examples."""


for _module in (data_cmd, train_cmd, attack_cmd, list_cmd):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Runs the ``advlab`` command.

    First makes glibc ``malloc`` keep freed memory in the process (:func:`advlab.keep_freed_memory`: attacks
    and training on CPU ran about 20 % faster with it on the benchmark machine); ``ADVLAB_DEFAULT_MALLOC=1``
    keeps the C library's defaults."""
    if os.environ.get("ADVLAB_DEFAULT_MALLOC", "") not in ("1", "true", "yes"):
        keep_freed_memory()
    cli()


if __name__ == "__main__":
    main()
