"""``advlab train`` (train a zoo model on a dataset, save a checkpoint) and ``advlab demo``.

Both only parse arguments, call :func:`advlab.train.train_model` (and :func:`advlab.train.save_run`) and
print; the options of the hyper-parameters are built from the fields of :class:`advlab.train.Recipe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click

from advlab.cli._options import config_options, given_options
from advlab.cli.common import common_options, echo_json, resolve_device
from advlab.train import (
    OPTIMIZERS,
    SCHEDULES,
    Callback,
    ProgressBar,
    Recipe,
    TrainRun,
    get_recipe,
    save_run,
    train_model,
)

DEMO_MODEL = "cnn-small"
DEMO_DATA = "digits"

# The recipe fields as options: counts are >= 1, rates and sizes >= 0, strings from their valid values.
recipe_options = config_options(
    Recipe,
    choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES},
    param_types={int: click.IntRange(min=1), float: click.FloatRange(min=0)},
    default_text="[default: the model's recipe].",
)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def recipe_from_options(model: str, data: str, values: Mapping[str, Any]) -> Recipe:
    """The recipe of ``model`` on ``data`` with the options that were given (not ``None``) applied;
    an optional field given as ``none`` becomes ``None``."""
    return replace(get_recipe(model, data), **given_options(values, (f.name for f in fields(Recipe))))


def _run(model: str, data: str, recipe: Recipe, device: str, seed: int, data_root: Path | None,
         n_train: int | None, callbacks: Sequence[Callback]) -> TrainRun:
    """:func:`train_model`, with the user's errors as one-line ``click`` exceptions."""
    dev = resolve_device(device)
    try:
        return train_model(model, data, recipe, seed=seed, device=dev, data_root=data_root, n_train=n_train,
                           callbacks=callbacks)
    except (ValueError, OSError, FloatingPointError) as err:
        raise click.ClickException(_one_line(err)) from err


@click.command("train")
@click.option("--model", "model_name", default="cnn-small", show_default=True,
              help="Model name (see `advlab list models`).")
@click.option("--data", default="digits", show_default=True, help="Dataset name (see `advlab list datasets`).")
@recipe_options
@click.option("--n-train", type=click.IntRange(min=2), default=None,
              help="Train on a random subset of this many examples (quick runs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory [default: runs/MODEL-DATA].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def train_command(
    model_name: str,
    data: str,
    n_train: int | None,
    out: Path | None,
    no_progress: bool,
    device: str,
    seed: int,
    data_root: Path | None,
    **recipe_values: Any,
) -> None:
    """Train a zoo model on a dataset, save the checkpoint and print a JSON summary.

    Unset hyper-parameters come from the model's recipe (advlab.train.recipes); optional ones
    (--schedule, --grad-clip) also take `none`. Accuracies in the summary are fractions in [0, 1];
    train_accuracy is the running accuracy of the last epoch.

    \b
    Example:
      advlab train --model cnn-small --data mnist --epochs 2 --out runs/mnist-cnn
    """
    recipe = recipe_from_options(model_name, data, recipe_values)
    run = _run(model_name, data, recipe, device, seed, data_root, n_train,
               [] if no_progress else [ProgressBar()])
    path = save_run(run, out if out is not None else Path("runs") / f"{model_name}-{data}")
    echo_json({**run.summary, "checkpoint": str(path)})


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the trained model here.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def demo_command(out: Path | None, no_progress: bool, device: str, seed: int, data_root: Path | None) -> None:
    """Train a small CNN on the bundled 8x8 digits (no download, seconds) and report its accuracy."""
    recipe = get_recipe(DEMO_MODEL, DEMO_DATA)
    run = _run(DEMO_MODEL, DEMO_DATA, recipe, device, seed, data_root, None,
               [] if no_progress else [ProgressBar(per_epoch=False)])
    s = run.summary
    click.echo(
        f"{DEMO_MODEL} on {DEMO_DATA}: test accuracy {100 * s['test_accuracy']:.1f}% on {s['n_test']} held-out "
        f"images after {s['epochs']} epochs on {s['n_train']} ({s['seconds']:.1f} s on {s['device']})"
    )
    payload = dict(s)
    if out is not None:
        payload["checkpoint"] = str(save_run(run, out))
    echo_json(payload)


COMMANDS = [train_command, demo_command]
