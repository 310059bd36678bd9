"""``advlab attack``: run one registered attack on a checkpoint over a dataset split, for several budgets.

Writes a JSON record (config, clean and robust accuracy, success rates, perturbation sizes, cost) and,
with ``--grid``, a PNG of clean, perturbation and adversarial images at the largest budget. Every
hyper-parameter of every registered attack is a typed option, built from the attacks' config dataclasses.
Both outputs are checked before the checkpoint is read (an existing file is replaced only with
``--overwrite``; neither may lie in the checkpoint or be the other) and written atomically.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from advlab.attacks import ATTACKS, attack_spec, list_attacks
from advlab.cli._errors import user_errors
from advlab.cli._options import config_options, flag, given_options, union_fields
from advlab.cli._outputs import check_output, write_output, write_text_output
from advlab.cli.common import common_options, resolve_device
from advlab.threat import NORMS

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_CONFIGS = {name: ATTACKS.get(name).config for name in list_attacks()}
# Every hyper-parameter of every registered attack: its type, the attacks that take it, whether optional.
HYPER = union_fields(_CONFIGS)


class _MultiValueCommand(click.Command):
    """A command whose ``--eps`` takes any number of space-separated values (``--eps 0.1 0.2 0.3``).

    Before click parses the arguments, every value that follows ``--eps`` (up to the next option) is
    rewritten as its own ``--eps VALUE``; a negative number counts as a value (so it is rejected as a
    budget, not mistaken for an option). ``--eps 0.1 --eps 0.2`` and ``--eps 0.1,0.2`` work as usual.
    """

    greedy_options = ("--eps",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.expand(args))

    @classmethod
    def expand(cls, args: Sequence[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            out.append(arg)
            i += 1
            if arg == "--":
                out.extend(args[i:])
                break
            name = arg.split("=", 1)[0]
            if name not in cls.greedy_options:
                continue
            if "=" not in arg and i < len(args):  # the option's own value, whatever it looks like
                out.append(args[i])
                i += 1
            while i < len(args) and (not args[i].startswith("-") or _is_number_list(args[i])):
                out += [name, args[i]]
                i += 1
        return out


def _is_number_list(token: str) -> bool:
    parts = [part.strip() for part in token.split(",") if part.strip()]
    return bool(parts) and all(_NUMBER.match(part) for part in parts)


def parse_eps(values: Sequence[str]) -> tuple[float, ...]:
    """``("0.1", "0.2,0.3")`` -> ``(0.1, 0.2, 0.3)``; raises ``click.BadParameter`` on a bad budget."""
    budgets: list[float] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                e = float(part)
            except ValueError:
                raise click.BadParameter(
                    f"{part!r} is not a number; give budgets like --eps 0.1 0.2, --eps 0.1 --eps 0.2 or --eps 0.1,0.2",
                    param_hint="--eps",
                ) from None
            if not math.isfinite(e) or e < 0:
                raise click.BadParameter(
                    f"budgets must be finite and non-negative (raw input units), got {part}", param_hint="--eps"
                )
            budgets.append(e)
    if not budgets:
        raise click.BadParameter("give at least one budget, e.g. --eps 0.1", param_hint="--eps")
    return tuple(budgets)


# One typed option per hyper-parameter of the registered attacks; its help lists the attacks that take it.
hyper_options = config_options(
    _CONFIGS, help={name: f"Attacks: {', '.join(f.owners)}" for name, f in HYPER.items()},
    default_text="(default: the attack's).",
)


def attack_params(attack: str, given: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters the user set, checked against the attack's config: an option the attack does
    not take is an error, not silently ignored."""
    spec = attack_spec(attack)
    fields = spec.defaults()
    params = given_options(given, HYPER)
    for key in params:
        if key not in fields:
            takes = ", ".join(flag(f) for f in fields) or "no hyper-parameters"
            raise click.UsageError(f"attack {attack!r} does not take {flag(key)}; it takes {takes}")
    return params


@click.command("attack", cls=_MultiValueCommand)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint directory.")
@click.option("--attack", "attack_name", required=True, type=click.Choice(list_attacks()),
              help="Registered attack name (see `advlab list attacks`).")
@click.option(
    "--eps", "eps_values", multiple=True, required=True, metavar="E [E ...]",
    help="Budgets in raw input units (l0: numbers of features): --eps 0.1 0.2, --eps 0.1 --eps 0.2 or --eps 0.1,0.2.",
)
@click.option("--norm", type=click.Choice(list(NORMS)), default=None, help="Threat model (default: the attack's).")
@hyper_options
@click.option(
    "--targeted", default=None, metavar="least-likely|random|CLASS",
    help="Targeted run: least-likely class, a random other class, or a fixed class index "
    "(examples whose true class is that class are left out).",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Attack the first N examples of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the JSON results.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save a PNG grid of clean/perturbation/adversarial images at the largest budget.")
@click.option("--overwrite", is_flag=True, help="Replace --json and --grid files that already exist.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one recorded in the checkpoint).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@common_options
def attack_command(
    checkpoint: Path, attack_name: str, eps_values: tuple[str, ...], norm: str | None, targeted: str | None,
    n: int, batch_size: int, json_out: Path, grid: Path | None, overwrite: bool, split: str, data_name: str | None,
    no_progress: bool, device: str, seed: int, data_root: Path | None, **hyper: Any,
) -> None:
    """Attack a checkpoint on the first N examples of a dataset split, for one or more budgets.

    \b
    Example:
      advlab attack --checkpoint runs/cnn --attack pgd --eps 0.1 0.2 0.3 --steps 40 --json pgd.json --grid pgd.png
    """
    from advlab.data import dataset_info
    from advlab.evaluate import attack_checkpoint
    from advlab.report import save_record_grid

    budgets = parse_eps(eps_values)
    params = attack_params(attack_name, hyper)
    spec = attack_spec(attack_name)
    if norm is not None:
        if norm not in spec.norms:
            raise click.BadParameter(f"attack {attack_name!r} does not support norm {norm!r}; supported: "
                                     f"{', '.join(spec.norms)}", param_hint="--norm")
        params["norm"] = norm
    if targeted is not None and not spec.targeted:
        raise click.UsageError(f"attack {attack_name!r} has no targeted mode; drop --targeted")
    dev = resolve_device(device)
    # Outputs are checked before the checkpoint and the data are read: a bad path fails now, not after the attack.
    check_output(json_out, option="--json", inputs={"--checkpoint": checkpoint}, others={"--grid": grid},
                 overwrite=overwrite)
    if grid is not None:
        check_output(grid, option="--grid", inputs={"--checkpoint": checkpoint}, others={"--json": json_out},
                     overwrite=overwrite)
    with user_errors(f"{attack_name}: "):
        record = attack_checkpoint(checkpoint, attack_name, eps=list(budgets), data=data_name, split=split, n=n,
                                   data_root=data_root, device=dev, seed=seed, targets=targeted,
                                   batch_size=batch_size, show_progress=not no_progress, **params)
    payload = record.to_dict()
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    with user_errors():
        json_out = write_text_output(json_out, text, overwrite=overwrite)
        if grid is not None:
            names = dataset_info(record.config["dataset"]).class_names
            model = record.model  # the model attacked: the checkpoint is read once
            assert model is not None
            grid = write_output(grid, lambda tmp: save_record_grid(record, model, tmp, class_names=names),
                                overwrite=overwrite)
    _print_table(payload, json_out, grid)


def _print_table(payload: dict[str, Any], json_out: Path, grid: Path | None) -> None:
    cfg = payload["config"]
    click.echo(
        f"{payload['attack']} ({cfg['norm']}) on {cfg['model']} / {cfg['dataset']} {cfg['split']}: "
        f"n={payload['n']}, clean accuracy {payload['clean_accuracy']:.1%}"
        + (f", targeted ({cfg['target_mode']})" if payload["targeted"] else "")
    )
    click.echo(f"{'eps':>10} {'robust acc':>11} {'success':>9} {'median dist':>12} {'mean dist':>10}")
    for row in payload["results"]:
        med = "-" if row["median_distance"] is None else f"{row['median_distance']:.4g}"
        mean = "-" if row["mean_distance"] is None else f"{row['mean_distance']:.4g}"
        click.echo(
            f"{row['eps']:>10.4g} {row['robust_accuracy']:>11.1%} {row['success_rate']:>9.1%} {med:>12} {mean:>10}"
        )
    rate = payload["examples_per_second"]
    click.echo(
        f"{payload['n_forward']} forward / {payload['n_backward']} backward passes, {payload['seconds']:.2f} s"
        + (f" ({rate:.1f} examples/s)" if rate else "")
    )
    for row in payload["results"]:
        if "mean_queries" in row:  # a black-box attack: the attacker's queries per example
            click.echo(f"eps {row['eps']:.4g}: {row['mean_queries']:.1f} mean / {row['median_queries']:.0f} median "
                       f"queries per example")
    click.echo(f"results: {json_out}")
    if grid is not None:
        click.echo(f"grid: {grid}")


COMMANDS = [attack_command]
