"""``advlab transfer``: the transfer matrix of several checkpoints (craft on each, evaluate on all).

Parses the arguments, calls :func:`advlab.evaluate.transfer_matrix_checkpoints` and prints the matrix; the
JSON record and, with ``--png``, the heatmap are checked before any work and written atomically (replacing a
file only with ``--overwrite``). The attack's hyper-parameters are the typed options of ``advlab attack``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from advlab.cli._errors import user_errors
from advlab.cli._outputs import check_output, write_output, write_text_output
from advlab.cli.attack_cmd import attack_params, hyper_options
from advlab.cli.common import FiniteFloat, common_options, resolve_device
from advlab.threat import NORMS


@click.command("transfer")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkpoint (repeat for every model of the matrix).")
@click.option("--name", "names", multiple=True,
              help="A name per --checkpoint, in order (default: the checkpoints' folder names).")
@click.option("--attack", "attack_name", default="pgd", show_default=True,
              help="White-box attack crafted on every source with gradients; trees and kNN use the attack of "
              "their kind when one is registered (else they are targets only).")
@click.option("--eps", type=FiniteFloat(min=0), required=True, help="Budget, raw input units.")
@click.option("--norm", type=click.Choice(list(NORMS)), default=None, help="Threat model (default: the attack's).")
@hyper_options
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Use the first N examples of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Chunk size of the attacks.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None,
              help="Dataset (default: the one recorded in the first checkpoint).")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the matrix as JSON.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the matrix as a heatmap PNG.")
@click.option("--overwrite", is_flag=True, help="Replace --json and --png files that already exist.")
@common_options
def transfer_command(
    checkpoints: tuple[Path, ...], names: tuple[str, ...], attack_name: str, eps: float, norm: str | None, n: int,
    batch_size: int | None, split: str, data_name: str | None, json_out: Path, png: Path | None, overwrite: bool,
    device: str, seed: int, data_root: Path | None, **hyper: Any,
) -> None:
    """Craft adversarial examples on each checkpoint and measure how often they fool every other one.

    The rate of source S on target T: among the points T classifies correctly, the fraction it misclassifies
    on the examples crafted on S; the diagonal is the white-box rate.

    \b
    Example:
      advlab transfer --checkpoint runs/cnn --checkpoint runs/mlp --attack pgd --eps 0.3 --json m.json --png m.png
    """
    from advlab.attacks import attack_spec, list_attacks
    from advlab.evaluate import transfer_matrix_checkpoints

    if attack_name not in list_attacks():
        raise click.BadParameter(f"unknown attack {attack_name!r}; valid names: {', '.join(list_attacks())}",
                                 param_hint="--attack")
    spec = attack_spec(attack_name)
    if norm is not None and norm not in spec.norms:
        raise click.BadParameter(f"attack {attack_name!r} does not support norm {norm!r}; supported: "
                                 f"{', '.join(spec.norms)}", param_hint="--norm")
    if names and len(names) != len(checkpoints):
        raise click.BadParameter(f"{len(names)} name(s) for {len(checkpoints)} checkpoint(s); give one --name per "
                                 f"--checkpoint, in order", param_hint="--name")
    params = attack_params(attack_name, hyper)
    dev = resolve_device(device)
    inputs = {f"--checkpoint {c}": c for c in checkpoints}
    check_output(json_out, option="--json", inputs=inputs, others={"--png": png}, overwrite=overwrite)
    if png is not None:
        check_output(png, option="--png", inputs=inputs, others={"--json": json_out}, overwrite=overwrite)
    with user_errors():
        matrix = transfer_matrix_checkpoints(
            list(checkpoints), names=list(names) or None, data=data_name, split=split, n=n, data_root=data_root,
            device=dev, attack=attack_name, eps=eps, norm=norm, seed=seed, batch_size=batch_size, **params,
        )
    with user_errors():
        json_out = write_text_output(json_out, matrix.to_json() + "\n", overwrite=overwrite)
        if png is not None:
            png = write_output(png, lambda tmp: matrix.save_heatmap(tmp, overwrite=True), overwrite=overwrite)
    _print_matrix(matrix.to_dict(), json_out, png)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_matrix(p: dict[str, Any], json_out: Path, png: Path | None) -> None:
    names: list[str] = p["names"]
    width = max(8, *(len(s) for s in names)) + 1
    click.echo(f"transfer rates ({p['norm']}, eps={p['eps']:g}, n={p['n']}); rows: source (attack), columns: target; "
               f"diagonal: white-box")
    click.echo(" " * (width + 14) + "".join(f"{s:>{width}}" for s in names))
    for name, row in zip(names, p["rates"], strict=True):
        attack = p["attacks"].get(name) or "-"
        cells = "".join(f"{'target only':>{width}}" if row is None and j == 0 else
                        f"{'':>{width}}" if row is None else f"{_cell(row[j]):>{width}}" for j in range(len(names)))
        click.echo(f"{name:<{width}}{'(' + attack + ')':<14}{cells}")
    click.echo("clean accuracy" + " " * (width) + "".join(f"{_cell(p['clean_accuracy'][s]):>{width}}" for s in names))
    for name, why in p["targets_only"].items():
        click.echo(f"{name}: target only ({why})")
    click.echo(f"results: {json_out}")
    if png is not None:
        click.echo(f"heatmap: {png}")


COMMANDS = [transfer_command]
