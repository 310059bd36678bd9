"""``advlab attack``: run one registered attack on a checkpoint over a dataset split, for several budgets.

Writes a JSON record (config, clean and robust accuracy, success rates, perturbation norms, cost) and,
with ``--grid``, a PNG of clean, perturbation and adversarial images at the largest budget.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor, nn

from advlab.cli.common import common_options, resolve_device

# Arguments the command itself supplies; everything else in an attack's signature is a hyper-parameter.
_SUPPLIED = ("model", "x", "y", "eps", "targeted", "generator", "batch_size", "true_labels")
# Hyper-parameters with a dedicated option; any other one is set with --param NAME=VALUE.
_FLAGS = {"norm": "--norm", "steps": "--steps", "restarts": "--restarts", "step_size": "--step-size"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_TARGET_MODES = ("least-likely", "random")


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


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE (e.g. --param loss=margin)", param_hint="--param")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), value


def attack_options(fn: Callable[..., Any]) -> list[str]:
    """The hyper-parameters an attack function accepts (keyword arguments beyond those the command fills)."""
    params = inspect.signature(fn).parameters
    return [name for name, p in params.items() if name not in _SUPPLIED and p.kind == p.KEYWORD_ONLY]


def _describe(options: Sequence[str]) -> str:
    parts = [_FLAGS.get(o, f"--param {o}=VALUE") for o in options]
    return ", ".join(parts) if parts else "no hyper-parameters"


def _build_kwargs(name: str, fn: Callable[..., Any], given: dict[str, Any], norms: Sequence[str]) -> dict[str, Any]:
    """Checks the user's hyper-parameters against the attack's signature and supported norms."""
    accepted = attack_options(fn)
    kwargs: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted:
            flag = _FLAGS.get(key, f"--param {key}")
            raise click.UsageError(f"attack {name!r} does not take {flag}; it accepts {_describe(accepted)}")
        kwargs[key] = value
    norm = kwargs.get("norm")
    if norm is not None and norm not in norms:
        raise click.BadParameter(
            f"attack {name!r} does not support norm {norm!r}; supported: {', '.join(norms)}", param_hint="--norm"
        )
    return kwargs


def _batched_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _make_targets(
    mode: str, model: nn.Module, x: Tensor, y: Tensor, num_classes: int, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Targets for a targeted run and the mask of examples kept (all, except for a fixed class)."""
    from advlab.threat import least_likely_targets, random_targets

    keep = torch.ones_like(y, dtype=torch.bool)
    if mode == "random":
        return random_targets(y, num_classes, generator), keep
    if mode == "least-likely":
        # the least likely class other than the true one (a misclassified example may rank it last)
        chunks = range(0, len(x), batch_size)
        targets = [least_likely_targets(model, x[i : i + batch_size], exclude=y[i : i + batch_size]) for i in chunks]
        return torch.cat(targets), keep
    try:
        cls = int(mode)
    except ValueError:
        raise click.BadParameter(
            f"{mode!r} is not a target mode; use least-likely, random or a class index", param_hint="--targeted"
        ) from None
    if not 0 <= cls < num_classes:
        raise click.BadParameter(f"class {cls} is out of range; use 0..{num_classes - 1}", param_hint="--targeted")
    keep = y != cls
    if not bool(keep.any()):
        raise click.UsageError(f"every selected example has true class {cls}; pick another target or a larger --n")
    return torch.full_like(y, cls), keep


def _versions() -> dict[str, str]:
    try:
        advlab_version = metadata.version("advlab")
    except metadata.PackageNotFoundError:
        from advlab import __version__ as advlab_version
    return {"advlab": advlab_version, "torch": torch.__version__}


def _json_safe(value: Any) -> Any:
    """Replaces NaN/inf by ``None`` and tuples by lists, recursively, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return _json_safe(value.tolist())
    return value


def _summarise(
    eps: Sequence[float], success: Tensor, norms: Tensor, clean_correct: Tensor, adv_correct: Tensor | None
) -> list[dict[str, Any]]:
    rows = []
    for i, e in enumerate(eps):
        ok = success[i]
        lp = norms[i][ok]
        if adv_correct is None:  # untargeted: still correct = correct on the clean input and not fooled
            robust = (clean_correct & ~ok).double().mean()
        else:  # targeted: accuracy w.r.t. the true labels on the adversarial inputs
            robust = (clean_correct & adv_correct[i]).double().mean()
        rows.append({
            "eps": e,
            "robust_accuracy": float(robust),
            "success_rate": float(ok.double().mean()),
            "median_norm": float(lp.double().median()) if lp.numel() else math.nan,
            "mean_norm": float(lp.double().mean()) if lp.numel() else math.nan,
        })
    return rows


@click.command("attack", cls=_MultiValueCommand)
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint directory.")
@click.option("--attack", "attack_name", required=True, help="Registered attack name (see `advlab list attacks`).")
@click.option(
    "--eps", "eps_values", multiple=True, required=True, metavar="E [E ...]",
    help="Budgets in raw input units: --eps 0.1 0.2, --eps 0.1 --eps 0.2 or --eps 0.1,0.2.",
)
@click.option("--norm", default=None, help="linf, l2 or l1 (default: the attack's default).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Iterations (iterative attacks).")
@click.option("--restarts", type=click.IntRange(min=1), default=None, help="Random restarts.")
@click.option("--step-size", type=float, default=None, help="Step size in raw input units.")
@click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE",
    help="Any other hyper-parameter of the attack, e.g. --param loss=margin (repeatable).",
)
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
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--data", "data_name", default=None, help="Dataset (default: the one recorded in the checkpoint).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@common_options
def attack_command(
    checkpoint: Path, attack_name: str, eps_values: tuple[str, ...], norm: str | None, steps: int | None,
    restarts: int | None, step_size: float | None, params: tuple[str, ...], targeted: str | None, n: int,
    batch_size: int, json_out: Path, grid: Path | None, split: str, data_name: str | None, no_progress: bool,
    device: str, seed: int, data_root: Path | None,
) -> None:
    """Attack a checkpoint on the first N examples of a dataset split, for one or more budgets.

    \b
    Example:
      advlab attack --checkpoint runs/cnn --attack pgd --eps 0.1 0.2 0.3 --steps 40 --json pgd.json --grid pgd.png
    """
    from tqdm import tqdm

    from advlab.attacks import attack_spec, list_attacks
    from advlab.data import dataset_info, load_dataset
    from advlab.models import load_checkpoint, load_checkpoint_metadata

    budgets = parse_eps(eps_values)
    if attack_name not in list_attacks():
        raise click.BadParameter(
            f"unknown attack {attack_name!r}; valid attacks: {', '.join(list_attacks())}", param_hint="--attack"
        )
    spec = attack_spec(attack_name)
    given: dict[str, Any] = dict(_parse_param(p) for p in params)
    given.update({"norm": norm, "steps": steps, "restarts": restarts, "step_size": step_size})
    kwargs = _build_kwargs(attack_name, spec.fn, given, spec.norms)
    if targeted is not None and not spec.targeted:
        raise click.UsageError(f"attack {attack_name!r} has no targeted mode; drop --targeted")
    dev = resolve_device(device)

    try:
        meta = load_checkpoint_metadata(checkpoint)
        model = load_checkpoint(checkpoint, device=dev)
    except (FileNotFoundError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--checkpoint") from None
    dataset = data_name or meta.get("dataset")
    if not dataset:
        raise click.UsageError("the checkpoint records no dataset; name it with --data")
    try:
        info = dataset_info(dataset)
        x_all, y_all = load_dataset(dataset, split, root=data_root)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    in_shape = tuple(meta["model"]["config"]["in_shape"])
    if tuple(x_all.shape[1:]) != in_shape:
        raise click.UsageError(
            f"the model takes inputs of shape {in_shape} but {dataset!r} has {tuple(x_all.shape[1:])}; "
            f"pass the dataset the model was trained on with --data"
        )
    x, y = x_all[:n].to(dev), y_all[:n].to(dev)
    n_requested = n
    num_classes = int(meta["model"]["config"]["num_classes"])
    generator = torch.Generator(device="cpu").manual_seed(seed)
    labels = y
    if targeted is not None:
        model.eval()
        labels, keep = _make_targets(targeted, model, x, y, num_classes, batch_size, generator)
        x, y, labels = x[keep], y[keep], labels[keep]

    fn = spec.fn
    total = x.shape[0]
    success, norms_, clean_correct, adv_correct = [], [], [], []
    grid_adv: list[Tensor] = []
    big = max(range(len(budgets)), key=lambda i: budgets[i])
    n_forward = n_backward = 0
    seconds = 0.0
    config: dict[str, Any] = {}
    bar = tqdm(
        range(0, total, batch_size), desc=attack_name, unit="batch", file=sys.stderr, disable=no_progress,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    for start in bar:
        xb, yb, lb = x[start : start + batch_size], y[start : start + batch_size], labels[start : start + batch_size]
        try:
            result = fn(
                model, xb, lb, eps=budgets, targeted=targeted is not None, generator=generator,
                true_labels=yb if targeted is not None else None, **kwargs,
            )
        except (TypeError, ValueError) as err:
            raise click.ClickException(f"{attack_name} failed: {err}") from None
        config = config or dict(result.config)
        success.append(result.success.cpu())
        norms_.append(result.norms.cpu())
        clean_correct.append(result.clean_correct.cpu())
        n_forward += result.n_forward
        n_backward += result.n_backward
        seconds += result.seconds
        if targeted is not None:
            preds = [_batched_logits(model, result.x_adv[i], batch_size).argmax(1) for i in range(len(budgets))]
            adv_correct.append((torch.stack(preds) == yb[None]).cpu())
        if grid is not None:
            grid_adv.append(result.x_adv[big].cpu())
    bar.close()
    wall = time.perf_counter() - t0

    succ, lp, cc = torch.cat(success, 1), torch.cat(norms_, 1), torch.cat(clean_correct)
    rows = _summarise(budgets, succ, lp, cc, torch.cat(adv_correct, 1) if adv_correct else None)
    config.update({
        "batch_size": batch_size,
        "checkpoint": str(Path(checkpoint).resolve()),
        "model": meta["model"]["name"],
        "model_config": meta["model"]["config"],
        "model_hash": meta.get("weights", {}).get("content_hash"),
        "dataset": dataset,
        "split": split,
        "n": total,
        "n_requested": n_requested,
        "seed": seed,
        "device": str(dev),
        "target_mode": targeted,
        "versions": _versions(),
    })
    payload = {
        "attack": attack_name,
        "config": config,
        "n": total,
        "n_excluded": n_requested - total if targeted is not None else 0,
        "targeted": targeted is not None,
        "clean_accuracy": float(cc.double().mean()),
        "results": rows,
        "n_forward": n_forward,
        "n_backward": n_backward,
        "seconds": seconds,
        "wall_seconds": wall,
        "examples_per_second": total / seconds if seconds > 0 else None,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")

    if grid is not None:
        _save_grid(grid, model, x, y, labels, torch.cat(grid_adv), cc, succ[big], targeted is not None,
                   info.class_names, batch_size, title=f"{attack_name} ({config.get('norm', '')}) eps={budgets[big]:g}",
                   bounds=getattr(model, "bounds", (0.0, 1.0)))
    _print_table(payload, config.get("norm", ""), json_out, grid)


def _save_grid(
    path: Path, model: nn.Module, x: Tensor, y: Tensor, labels: Tensor, x_adv: Tensor, clean_correct: Tensor,
    success: Tensor, targeted: bool, class_names: Sequence[str], batch_size: int, title: str,
    bounds: tuple[float, float],
) -> None:
    from advlab.report.grid import pick_examples, save_attack_grid

    idx = pick_examples(clean_correct, 8)
    xs, xa = x[idx.to(x.device)], x_adv[idx].to(x.device)
    save_attack_grid(
        xs.cpu(), xa.cpu(), y[idx.to(y.device)].cpu(), _batched_logits(model, xs, batch_size).cpu(),
        _batched_logits(model, xa, batch_size).cpu(), path, class_names=class_names, success=success[idx],
        targets=labels[idx.to(labels.device)].cpu() if targeted else None, bounds=bounds, title=title,
    )


def _print_table(payload: dict[str, Any], norm: str, json_out: Path, grid: Path | None) -> None:
    cfg = payload["config"]
    click.echo(
        f"{payload['attack']} ({norm}) on {cfg['model']} / {cfg['dataset']} {cfg['split']}: "
        f"n={payload['n']}, clean accuracy {payload['clean_accuracy']:.1%}"
        + (f", targeted ({cfg['target_mode']})" if payload["targeted"] else "")
    )
    click.echo(f"{'eps':>10} {'robust acc':>11} {'success':>9} {'median norm':>12} {'mean norm':>10}")
    for row in payload["results"]:
        med = "-" if math.isnan(row["median_norm"]) else f"{row['median_norm']:.4g}"
        mean = "-" if math.isnan(row["mean_norm"]) else f"{row['mean_norm']:.4g}"
        click.echo(
            f"{row['eps']:>10.4g} {row['robust_accuracy']:>11.1%} {row['success_rate']:>9.1%} {med:>12} {mean:>10}"
        )
    eps_rate = payload["examples_per_second"]
    click.echo(
        f"{payload['n_forward']} forward / {payload['n_backward']} backward passes, {payload['seconds']:.2f} s"
        + (f" ({eps_rate:.1f} examples/s)" if eps_rate else "")
    )
    click.echo(f"results: {json_out}")
    if grid is not None:
        click.echo(f"grid: {grid}")


COMMANDS = [attack_command]
