"""``advlab train`` (train a zoo model on a dataset, save a checkpoint) and ``advlab demo``.

Both only parse arguments, call :func:`advlab.train.train_model` (and :func:`advlab.train.save_run`) and
print; the options of the hyper-parameters are built from the fields of :class:`advlab.train.Recipe`.
``--out`` is checked and locked (:func:`advlab.models.reserve_checkpoint`) before the data is loaded, so a
conflicting or unwritable path, or one another process is writing, fails at once; an existing checkpoint is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click

from advlab.cli._options import config_options, given_options
from advlab.cli._outputs import echo_json
from advlab.cli.common import common_options, resolve_device
from advlab.models import CheckpointExistsError, reserve_checkpoint
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


@contextmanager
def _reserved(out: Path, overwrite: bool) -> Iterator[Path]:
    """:func:`reserve_checkpoint` of ``--out`` (checked and locked until the block ends), with its refusals as
    one-line ``click`` exceptions."""
    stack = ExitStack()
    try:
        path = stack.enter_context(reserve_checkpoint(out, overwrite=overwrite))
    except CheckpointExistsError as err:
        raise click.ClickException(
            f"--out {str(err.directory)!r} already holds a checkpoint; pass --overwrite to replace it, or choose "
            f"another --out"
        ) from err
    except OSError as err:  # a file in the way, not writable, or locked by another process
        raise click.ClickException(_one_line(err).replace("choose another output", "choose another --out")) from err
    with stack:
        yield path


def _save(run: TrainRun, out: Path, overwrite: bool) -> Path:
    """:func:`save_run`, with the user's errors as one-line ``click`` exceptions."""
    try:
        return save_run(run, out, overwrite=overwrite)
    except (ValueError, OSError) as err:
        raise click.ClickException(_one_line(err)) from err


_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace a checkpoint already in --out (else the command refuses at once).")


@click.command("train")
@click.option("--model", "model_name", default="cnn-small", show_default=True,
              help="Model name (see `advlab list models`).")
@click.option("--data", default="digits", show_default=True, help="Dataset name (see `advlab list datasets`).")
@recipe_options
@click.option("--n-train", type=click.IntRange(min=2), default=None,
              help="Train on a random subset of this many examples (quick runs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory [default: runs/MODEL-DATA].")
@_overwrite_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def train_command(
    model_name: str,
    data: str,
    n_train: int | None,
    out: Path | None,
    overwrite: bool,
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
    with _reserved(out if out is not None else Path("runs") / f"{model_name}-{data}", overwrite) as target:
        run = _run(model_name, data, recipe, device, seed, data_root, n_train,
                   [] if no_progress else [ProgressBar()])
        path = _save(run, target, overwrite)
    echo_json({**run.summary, "checkpoint": str(path)})


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the trained model here.")
@_overwrite_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def demo_command(out: Path | None, overwrite: bool, no_progress: bool, device: str, seed: int,
                 data_root: Path | None) -> None:
    """Train a small CNN on the bundled 8x8 digits (no download, seconds) and report its accuracy."""
    recipe = get_recipe(DEMO_MODEL, DEMO_DATA)
    with _reserved(out, overwrite) if out is not None else nullcontext(None) as target:
        run = _run(DEMO_MODEL, DEMO_DATA, recipe, device, seed, data_root, None,
                   [] if no_progress else [ProgressBar(per_epoch=False)])
        path = None if target is None else _save(run, target, overwrite)
    s = run.summary
    click.echo(
        f"{DEMO_MODEL} on {DEMO_DATA}: test accuracy {100 * s['test_accuracy']:.1f}% on {s['n_test']} held-out "
        f"images after {s['epochs']} epochs on {s['n_train']} ({s['seconds']:.1f} s on {s['device']})"
    )
    payload = dict(s)
    if path is not None:
        payload["checkpoint"] = str(path)
    echo_json(payload)


COMMANDS = [train_command, demo_command]
