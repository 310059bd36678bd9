"""``advlab blackbox``: Papernot et al.'s substitute attack on a checkpoint behind a label-only oracle.

Parses the arguments, calls :func:`advlab.blackbox.substitute_attack_checkpoint` and prints a summary; the
JSON record (``substitute_accuracy``, ``queries``, ``oracle_misclassification``, the per-round history, the
full config) is checked before any work and written atomically (replacing a file only with ``--overwrite``).
The attack's hyper-parameters are the typed options of ``advlab attack``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from advlab.attacks import ATTACKS, list_attacks
from advlab.cli._errors import CommandError, user_errors
from advlab.cli._options import config_options
from advlab.cli._outputs import check_output, write_text_output
from advlab.cli.attack_cmd import HYPER, attack_params
from advlab.cli.common import FiniteFloat, common_options, resolve_device
from advlab.threat import NORMS

# Options of this command that an attack's hyper-parameter may share a name with (a score-based attack's
# per-example ``max_queries``): such attacks' hyper-parameters get no option here (they run with defaults).
_OWN = {"max_queries"}
_ALL = {name: ATTACKS.get(name).config for name in list_attacks()}
_CONFIGS = {name: config for name, config in _ALL.items() if not _OWN & {f.name for f in dataclasses.fields(config)}}
hyper_options = config_options(
    _CONFIGS, help={name: f"Attacks: {', '.join(f.owners)}" for name, f in HYPER.items()},
    default_text="(default: the attack's).",
)


@click.command("blackbox")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint of the model to attack (the oracle: it answers top-1 labels only).")
@click.option("--data", "data_name", default=None, help="Dataset (default: the one recorded in the checkpoint).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Split holding the seed set and the points attacked.")
@click.option("--seed-size", type=click.IntRange(min=1), default=150, show_default=True,
              help="Seed points held out of the split (balanced across classes), the attacker's initial set.")
@click.option("--rounds", type=click.IntRange(min=1), default=6, show_default=True,
              help="Substitute training rounds (the set doubles between rounds).")
@click.option("--attack", "attack_name", default="fgsm", show_default=True,
              help="White-box attack run on the substitute (see `advlab list attacks`).")
@click.option("--eps", type=FiniteFloat(min=0), default=0.3, show_default=True, help="Budget, raw input units.")
@click.option("--norm", type=click.Choice(list(NORMS)), default=None, help="Threat model (default: the attack's).")
@click.option("--lam", type=FiniteFloat(min=0, min_open=True), default=0.2, show_default=True,
              help="Jacobian augmentation step lambda (the paper: 0.1).")
@click.option("--tau", type=click.IntRange(min=1), default=3, show_default=True,
              help="The step's sign flips every TAU rounds.")
@click.option("--reservoir", type=click.IntRange(min=1), default=None,
              help="Reservoir sampling: after --reservoir-after rounds, only this many new points per round.")
@click.option("--reservoir-after", type=click.IntRange(min=0), default=3, show_default=True,
              help="Rounds of full augmentation before reservoir sampling (sigma).")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="The oracle's total query budget; training stops before a round that would exceed it.")
@click.option("--substitute", "substitute_model", default="cnn-small", show_default=True,
              help="Zoo model of the substitute (see `advlab list models`).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Substitute training epochs per round [default: 10].")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True,
              help="Substitutes trained on the same labelled points (no extra query); the attack follows their "
              "fused loss (an improvement beyond the paper, which trains one).")
@click.option("--final-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of the last round and of each extra ensemble member [default: --epochs].")
@click.option("--shift", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train on the labelled images randomly shifted by up to SHIFT pixels (labels kept).")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Weight decay of the substitute's SGD.")
@click.option("--craft-labels", type=click.Choice(["substitute", "oracle"]), default="oracle", show_default=True,
              help="Labels the attack crafts with: the substitute's predictions (no query) or the oracle's "
              "(one query per point).")
@hyper_options
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Attack the first N points of the split left after the seed set.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Chunk size of the attack.")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the JSON results.")
@click.option("--overwrite", is_flag=True, help="Replace the --json file if it exists.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@common_options
def blackbox_command(
    checkpoint: Path, data_name: str | None, split: str, seed_size: int, rounds: int, attack_name: str, eps: float,
    norm: str | None, lam: float, tau: int, reservoir: int | None, reservoir_after: int, max_queries: int | None,
    substitute_model: str, epochs: int | None, ensemble: int, final_epochs: int | None, shift: int,
    weight_decay: float, craft_labels: str, n: int, batch_size: int | None, json_out: Path,
    overwrite: bool, no_progress: bool, device: str, seed: int, data_root: Path | None, **hyper: Any,
) -> None:
    """Train a substitute of a checkpoint from its labels alone and transfer a white-box attack to it.

    \b
    Example:
      advlab blackbox --checkpoint runs/cnn --seed-size 150 --rounds 6 --attack fgsm --eps 0.3 --json bb.json
    """
    from advlab.attacks import attack_spec
    from advlab.blackbox import SUBSTITUTE_RECIPE, substitute_attack_checkpoint
    from advlab.models import list_models
    from advlab.oracle import QueryBudgetError

    if attack_name not in list_attacks():
        raise click.BadParameter(f"unknown attack {attack_name!r}; valid names: {', '.join(list_attacks())}",
                                 param_hint="--attack")
    if substitute_model not in list_models():
        raise click.BadParameter(f"unknown model {substitute_model!r}; valid names: {', '.join(list_models())}",
                                 param_hint="--substitute")
    spec = attack_spec(attack_name)
    if norm is not None and norm not in spec.norms:
        raise click.BadParameter(f"attack {attack_name!r} does not support norm {norm!r}; supported: "
                                 f"{', '.join(spec.norms)}", param_hint="--norm")
    if max_queries is not None and max_queries < seed_size:
        raise click.BadParameter(f"{max_queries} queries cannot label the {seed_size} seed points; raise it or lower "
                                 f"--seed-size", param_hint="--max-queries")
    params = attack_params(attack_name, hyper)
    dev = resolve_device(device)
    check_output(json_out, option="--json", inputs={"--checkpoint": checkpoint}, overwrite=overwrite)
    try:
        with user_errors():
            report = substitute_attack_checkpoint(
                checkpoint, data=data_name, split=split, data_root=data_root, seed_size=seed_size, n=n,
                max_queries=max_queries, device=dev, seed=seed, attack=attack_name, eps=eps, norm=norm,
                attack_options=params or None, craft_labels=craft_labels, model=substitute_model, rounds=rounds,
                lam=lam, tau=tau, reservoir=reservoir, reservoir_after=reservoir_after, epochs=epochs,
                batch_size=batch_size, ensemble=ensemble, final_epochs=final_epochs, shift=shift,
                recipe=dataclasses.replace(SUBSTITUTE_RECIPE, weight_decay=weight_decay), progress=not no_progress,
            )
    except QueryBudgetError as err:
        raise CommandError(f"{err} (--max-queries)") from err
    payload = report.to_dict()
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    with user_errors():
        json_out = write_text_output(json_out, text, overwrite=overwrite)
    _print_summary(payload, json_out)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_summary(p: dict[str, Any], json_out: Path) -> None:
    cfg = p["config"]
    sub = cfg["substitute"]
    click.echo(f"substitute attack on {cfg['model']} / {cfg['dataset']} {cfg['split']}: seed set {cfg['seed_size']}, "
               f"{sub['rounds']} rounds, {p['attack']} ({p['norm']}) eps={p['eps']:g}, n={p['n']}")
    if sub.get("ensemble", 1) > 1:
        click.echo(f"ensemble of {sub['ensemble']} substitutes ({sub['final_epochs']} epochs each on the final set)")
    click.echo(f"{'round':>5} {'points':>7} {'queries':>8} {'lambda':>7} {'accuracy':>9} {'agreement':>10}")
    for row in p["history"]:
        lam = "-" if row["lam"] is None else f"{row['lam']:+g}"
        click.echo(f"{row['round']:>5} {row['points']:>7} {row['queries']:>8} {lam:>7} "
                   f"{_pct(row.get('accuracy')):>9} {_pct(row.get('agreement')):>10}")
    if p["stopped_early"]:
        click.echo(f"stopped early: {p['stop_reason']}")
    click.echo(f"substitute accuracy {_pct(p['substitute_accuracy'])}, agreement with the oracle "
               f"{_pct(p['substitute_agreement'])}; queries {p['queries']} (+{p['attack_queries']} for the attack)")
    click.echo(f"oracle clean accuracy {_pct(p['oracle_clean_accuracy'])}; oracle misclassification "
               f"{_pct(p['oracle_misclassification'])} of its {p['n_oracle_correct']} correct points "
               f"(error on all adversarial points {_pct(p['oracle_error_rate'])}); {p['seconds']['total']:.1f} s")
    click.echo(f"results: {json_out}")


COMMANDS = [blackbox_command]
