"""``advlab train`` (train a zoo model on a dataset, save a checkpoint) and ``advlab demo``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import torch

from advlab.cli.common import common_options, echo_json, resolve_device
from advlab.data import list_datasets, load_dataset
from advlab.models import Classifier, create_model, list_models, save_checkpoint
from advlab.train import (
    OPTIMIZERS,
    SCHEDULES,
    Callback,
    ProgressBar,
    Recipe,
    TrainHistory,
    evaluate_accuracy,
    fit,
    get_recipe,
    prepare_model,
)

DEMO_MODEL = "cnn-small"
DEMO_DATA = "digits"


@dataclass
class TrainRun:
    """A finished training run of the CLI."""

    model: Classifier
    history: TrainHistory
    summary: dict[str, Any]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def run_training(
    model_name: str,
    data: str,
    recipe: Recipe,
    *,
    seed: int,
    device: torch.device,
    data_root: Path | None,
    n_train: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainRun:
    """Loads ``data``, builds ``model_name`` (seeded), trains it with ``recipe`` and tests it.

    This is the application boundary, so it seeds torch's global RNG (dropout draws from it) as well as
    the model's initialisation; the same ``seed`` gives the same weights and numbers on CPU. Errors of the
    user's making come out as ``click`` exceptions with a one-line message.
    """
    if model_name not in list_models():
        raise click.BadParameter(
            f"unknown model {model_name!r}; valid names: {', '.join(list_models())}", param_hint="'--model'"
        )
    if data not in list_datasets():
        raise click.BadParameter(
            f"unknown dataset {data!r}; valid names: {', '.join(list_datasets())}", param_hint="'--data'"
        )
    try:
        x_train, y_train = load_dataset(data, "train", root=data_root)
        x_test, y_test = load_dataset(data, "test", root=data_root)
    except (ValueError, OSError) as err:
        raise click.ClickException(_one_line(err)) from err
    if n_train is not None and n_train < len(x_train):
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n_train]
        x_train, y_train = x_train[keep], y_train[keep]

    torch.manual_seed(seed)  # dropout and any other use of the global RNG during training
    model = create_model(model_name, dataset=data, generator=torch.Generator().manual_seed(seed))
    prepare_model(model, x_train, generator=torch.Generator().manual_seed(seed))
    model.to(device)
    try:
        history = fit(model, x_train, y_train, seed=seed, device=device, callbacks=callbacks,
                      **recipe.fit_kwargs())
    except (ValueError, FloatingPointError) as err:
        raise click.ClickException(_one_line(err)) from err
    history.test_accuracy = evaluate_accuracy(model, x_test, y_test)
    model.eval()
    summary: dict[str, Any] = {
        "model": model_name,
        "data": data,
        "epochs": len(history.epochs),
        "seconds": round(history.seconds, 3),
        "seconds_per_epoch": round(history.seconds_per_epoch, 3),
        "train_accuracy": history.train_accuracy,
        "test_accuracy": history.test_accuracy,
        "loss": history.epochs[-1].loss,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "seed": seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "recipe": recipe.to_dict(),
    }
    return TrainRun(model=model, history=history, summary=summary)


def _save(run: TrainRun, out: Path) -> Path:
    s = run.summary
    metrics = {
        k: s[k]
        for k in ("train_accuracy", "test_accuracy", "loss", "epochs", "seconds", "seconds_per_epoch", "n_train",
                  "n_test")
    }
    extra = {"recipe": s["recipe"], "device": s["device"], "history": run.history.to_dict()}
    return save_checkpoint(run.model, out, dataset=s["data"], metrics=metrics, seed=s["seed"], extra=extra)


@click.command("train")
@click.option("--model", "model_name", default="cnn-small", show_default=True,
              help="Model name (see `advlab list models`).")
@click.option("--data", default="digits", show_default=True, help="Dataset name (see `advlab list datasets`).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [default: the model's recipe].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [default: recipe].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate (peak for onecycle) [default: recipe].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="Optimizer [default: recipe].")
@click.option("--schedule", type=click.Choice(["none", *SCHEDULES]), default=None,
              help="Learning-rate schedule, stepped per batch [default: recipe].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="Weight decay [default: recipe].")
@click.option("--n-train", type=click.IntRange(min=2), default=None,
              help="Train on a random subset of this many examples (quick runs).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory [default: runs/MODEL-DATA].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def train_command(
    model_name: str,
    data: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    optimizer: str | None,
    schedule: str | None,
    weight_decay: float | None,
    n_train: int | None,
    out: Path | None,
    no_progress: bool,
    device: str,
    seed: int,
    data_root: Path | None,
) -> None:
    """Train a zoo model on a dataset, save the checkpoint and print a JSON summary.

    Unset hyper-parameters come from the model's recipe (advlab.train.recipes). Accuracies in the summary
    are fractions in [0, 1]; train_accuracy is the running accuracy of the last epoch.

    \b
    Example:
      advlab train --model cnn-small --data mnist --epochs 2 --out runs/mnist-cnn
    """
    dev = resolve_device(device)
    recipe = get_recipe(model_name, data, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        weight_decay=weight_decay)
    if schedule is not None:
        recipe = replace(recipe, schedule=None if schedule == "none" else schedule)
    run = run_training(model_name, data, recipe, seed=seed, device=dev, data_root=data_root, n_train=n_train,
                       callbacks=[] if no_progress else [ProgressBar()])
    path = _save(run, out if out is not None else Path("runs") / f"{model_name}-{data}")
    echo_json({**run.summary, "checkpoint": str(path)})


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also save the trained model here.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars (stderr).")
@common_options
def demo_command(out: Path | None, no_progress: bool, device: str, seed: int, data_root: Path | None) -> None:
    """Train a small CNN on the bundled 8x8 digits (no download, seconds) and report its accuracy."""
    dev = resolve_device(device)
    recipe = get_recipe(DEMO_MODEL, DEMO_DATA)
    run = run_training(DEMO_MODEL, DEMO_DATA, recipe, seed=seed, device=dev, data_root=data_root,
                       callbacks=[] if no_progress else [ProgressBar(per_epoch=False)])
    s = run.summary
    click.echo(
        f"{DEMO_MODEL} on {DEMO_DATA}: test accuracy {100 * s['test_accuracy']:.1f}% on {s['n_test']} held-out "
        f"images after {s['epochs']} epochs on {s['n_train']} ({s['seconds']:.1f} s on {s['device']})"
    )
    payload = dict(s)
    if out is not None:
        payload["checkpoint"] = str(_save(run, out))
    echo_json(payload)


COMMANDS = [train_command, demo_command]
