"""``advlab list``: what the registries hold."""

from __future__ import annotations

import click

import advlab

_KINDS = {
    "datasets": advlab.list_datasets,
    "models": advlab.list_models,
    "attacks": advlab.list_attacks,
    "defenses": advlab.list_defenses,
    "experiments": advlab.list_experiments,
}


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(_KINDS)), required=False)
def list_command(kind: str | None) -> None:
    """List registered datasets, models, attacks, defenses or experiments (all when KIND is omitted)."""
    for name in [kind] if kind else sorted(_KINDS):
        names = _KINDS[name]()
        click.echo(f"{name}: {', '.join(names) if names else '(none yet)'}")
        if name == "defenses" and kind == "defenses":  # asked for: one line each, by kind
            from advlab.defenses import KINDS, defense_spec, list_defenses

            for defense_kind in KINDS:
                for defense in list_defenses(defense_kind):
                    click.echo(f"  {defense:<15} {defense_kind:<12} {defense_spec(defense).summary}")


COMMANDS = [list_command]
