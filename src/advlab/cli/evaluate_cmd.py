"""``advlab evaluate``: how robust is a checkpoint, really? A worst-case cascade of an attack suite over
several budgets (:func:`advlab.evaluate._robustness.robustness_checkpoint`), with self-checks.

Prints, per budget, the robust accuracy and how many points each attack broke, the cost of every stage,
and one line per self-check warning with its advice. ``--json`` writes the evaluation (``Evaluation.to_dict()``:
results, stages, checks, cost and the full config with the checkpoint's provenance), checked before the
checkpoint is read and written atomically (an existing file is replaced only with ``--overwrite``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from advlab.cli._errors import user_errors
from advlab.cli._outputs import check_output, write_text_output
from advlab.cli.attack_cmd import _MultiValueCommand, parse_eps
from advlab.cli.common import common_options, resolve_device
from advlab.threat import NORMS

ADAPTIVE_CHOICES = ("bpda", "eot", "dlr")


@click.command("evaluate", cls=_MultiValueCommand)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint directory.")
@click.option(
    "--eps", "eps_values", multiple=True, required=True, metavar="E [E ...]",
    help="Budgets in raw input units: --eps 0.1 0.2 0.3, --eps 0.1 --eps 0.2 or --eps 0.1,0.2.",
)
@click.option("--norm", type=click.Choice(list(NORMS)), default="linf", show_default=True, help="Threat model.")
@click.option("--suite", "suite_name", default="standard", show_default=True,
              help="A registered suite (standard, quick, full; see the error for all) or a .toml suite file.")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Evaluate the first N points of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the evaluation as JSON.")
@click.option("--overwrite", "--force", "overwrite", is_flag=True, help="Replace the --json file if it exists.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one recorded in the checkpoint).")
@click.option("--no-checks", is_flag=True, help="Skip the self-checks for gradient masking.")
@click.option("--active-test", is_flag=True,
              help="Also run the active test (a variant of the model with a known adversarial example).")
@click.option("--adaptive", multiple=True, type=click.Choice(ADAPTIVE_CHOICES),
              help="Adaptive attack options (repeatable): bpda (a Defended model's transform), eot (randomised "
              "models), dlr (scale-invariant loss for saturated outputs).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@common_options
def evaluate_command(
    checkpoint: Path, eps_values: tuple[str, ...], norm: str, suite_name: str, n: int, batch_size: int,
    json_out: Path | None, overwrite: bool, split: str, data_name: str | None, no_checks: bool, active_test: bool,
    adaptive: tuple[str, ...], no_progress: bool, device: str, seed: int, data_root: Path | None,
) -> None:
    """Worst-case robust accuracy of a checkpoint under an attack suite, at one or more budgets.

    \b
    Example:
      advlab evaluate --checkpoint runs/cnn --norm linf --eps 0.1 0.2 0.3 --suite standard --n 1000 --json ev.json
    """
    from advlab.evaluate._robustness import robustness_checkpoint
    from advlab.evaluate._suites import resolve_suite

    budgets = parse_eps(eps_values)
    try:
        suite = resolve_suite(suite_name)
    except (ValueError, TypeError, OSError) as err:
        raise click.BadParameter(str(err), param_hint="--suite") from None
    if norm not in suite.norms:
        raise click.BadParameter(f"suite {suite.name!r} supports {', '.join(suite.norms)}, not {norm!r}",
                                 param_hint="--norm")
    if len(set(budgets)) != len(budgets):
        raise click.BadParameter("give each budget once", param_hint="--eps")
    dev = resolve_device(device)
    if json_out is not None:  # checked before the checkpoint and the data are read
        check_output(json_out, option="--json", inputs={"--checkpoint": checkpoint}, overwrite=overwrite)
    with user_errors(f"{suite.name}: "):
        evaluation = robustness_checkpoint(
            checkpoint, eps=list(budgets), norm=norm, suite=suite, data=data_name, split=split, n=n,
            data_root=data_root, device=dev, seed=seed, batch_size=batch_size, checks=not no_checks,
            active_test=active_test, adaptive=list(adaptive) or None, show_progress=not no_progress,
        )
    payload = evaluation.to_dict()
    if json_out is not None:
        text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
        with user_errors():
            json_out = write_text_output(json_out, text, overwrite=overwrite)
    _print_table(payload, json_out)


def _print_table(p: dict[str, Any], json_out: Path | None) -> None:
    cfg = p["config"]
    names: list[str] = p["attack_names"]
    click.echo(f"suite {p['suite']} ({p['norm']}) on {cfg.get('model', 'model')} / {cfg.get('dataset', '?')} "
               f"{cfg.get('split', '')}: n={p['n']}, clean accuracy {p['clean_accuracy']:.1%}"
               + (f", adaptive: {', '.join(cfg['adaptive'])}" if cfg.get("adaptive") else ""))
    width = max([10, *(len(name) + 1 for name in names)])
    click.echo(f"{'eps':>10} {'robust acc':>11}" + "".join(f" {name:>{width}}" for name in names))
    for e, acc, counts in zip(p["eps"], p["robust_accuracy"], p["broken_by_attack"], strict=True):
        click.echo(f"{e:>10.4g} {acc:>11.1%}" + "".join(f" {counts.get(name, 0):>{width}}" for name in names))
    click.echo("(columns per attack: points it broke first at that budget)")
    click.echo(f"{'eps':>10} {'attack':<{width}} {'attacked':>9} {'broken':>7} {'robust':>7} {'forward':>9} "
               f"{'backward':>9} {'queries':>9} {'seconds':>8}")
    for s in p["stages"]:
        click.echo(f"{s['eps']:>10.4g} {s['attack']:<{width}} {s['n_attacked']:>9} {s['n_broken']:>7} "
                   f"{s['robust_accuracy']:>7.1%} {s['n_forward']:>9} {s['n_backward']:>9} {s['n_queries']:>9} "
                   f"{s['seconds']:>8.2f}")
    cost = p["cost"]
    click.echo(f"total: {cost['n_forward']} forward / {cost['n_backward']} backward passes, {cost['n_queries']} "
               f"queries, {cost['seconds']:.2f} s")
    for check in p["checks"]:
        if check["status"] in ("warn", "fail"):
            advice = f" Advice: {check['advice']}" if check.get("advice") else ""
            click.echo(f"{'FAIL' if check['status'] == 'fail' else 'warning'} [{check['name']}]: "
                       f"{' '.join(str(check['message']).split())}{advice}")
    ran = [c for c in p["checks"] if c["status"] != "skip"]
    if ran and not any(c["status"] in ("warn", "fail") for c in ran):
        click.echo(f"self-checks: all {len(ran)} passed ({', '.join(c['name'] for c in ran)})")
    if p["checks"] and not p["reliable"]:
        click.echo("the evaluation is NOT reliable: a self-check failed (see above)")
    if json_out is not None:
        click.echo(f"results: {json_out}")


COMMANDS = [evaluate_command]
