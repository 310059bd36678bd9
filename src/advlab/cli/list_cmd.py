"""``advlab list``: what the registries hold."""

from __future__ import annotations

import click

import advlab
from advlab.evaluate import list_suites

_KINDS = {
    "datasets": advlab.list_datasets,
    "models": advlab.list_models,
    "attacks": advlab.list_attacks,
    "defenses": advlab.list_defenses,
    "experiments": advlab.list_experiments,
    "suites": list_suites,
}


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(_KINDS)), required=False)
def list_command(kind: str | None) -> None:
    """List registered datasets, models, attacks, defenses, experiments or attack suites (all when KIND is
    omitted)."""
    for name in [kind] if kind else sorted(_KINDS):
        names = _KINDS[name]()
        click.echo(f"{name}: {', '.join(names) if names else '(none yet)'}")
        if name == "defenses" and kind == "defenses":  # asked for: one line each, by kind
            from advlab.defenses import KINDS, defense_spec, list_defenses

            for defense_kind in KINDS:
                for defense in list_defenses(defense_kind):
                    click.echo(f"  {defense:<15} {defense_kind:<12} {defense_spec(defense).summary}")
        if name == "suites" and kind == "suites":  # asked for: each suite's attacks
            from advlab.evaluate import get_suite

            for suite in names:
                stages = ", ".join(a.name for a in get_suite(suite).attacks)
                click.echo(f"  {suite:<10} {stages}")


COMMANDS = [list_command]
