"""``advlab train``: train a zoo model on a dataset and save a checkpoint.

It only parses arguments, calls :func:`advlab.train.train_model` (and :func:`advlab.train.save_run`) and
prints; the options of the hyper-parameters are built from the fields of :class:`advlab.train.Recipe`.
``--out`` is checked and locked (:func:`advlab.models.reserve_checkpoint`) before the data is loaded, so a
conflicting or unwritable path, or one another process is writing, fails at once; an existing checkpoint is
replaced only with ``--overwrite``.

Under ``torchrun`` (``torchrun --nproc_per_node 2 -m advlab train ...``, see :mod:`advlab.train.distributed`)
``advlab train`` runs in every process inside :func:`~advlab.train.distributed_session` (DDP: gloo on CPU, NCCL
on CUDA with ``cuda:LOCAL_RANK``); process 0 alone reserves and writes ``--out``, shows the progress bar and
warnings and prints the summary. A mistake found before training (an option, a global ``--batch-size`` that
the processes cannot share, a refused ``--out``) is reported once, by process 0, and ends every process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

import click
import torch

from advlab.cli._options import attribute_help, config_options, flag, given_options, union_fields
from advlab.cli._outputs import echo_json
from advlab.cli.common import common_options, resolve_device
from advlab.defenses import defense_recipe, defense_spec, list_defenses, train_defended
from advlab.models import CheckpointExistsError, is_sklearn_model, reserve_checkpoint
from advlab.train import (
    FIT_CONFIGS,
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
from advlab.train.distributed import (
    PeerFailedError,
    all_true,
    check_batch_size,
    distributed_session,
    is_main_process,
    world_size,
)

T = TypeVar("T")


# The recipe fields as options: counts are >= 1, rates and sizes >= 0, strings from their valid values.
recipe_options = config_options(
    Recipe,
    choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES},
    param_types={int: click.IntRange(min=1), float: click.FloatRange(min=0)},
    default_text="[default: the model's recipe].",
)


_DEFENSES: dict[str, type] = {
    name: config for name in list_defenses("training") if (config := defense_spec(name).config) is not None
}
# Every option of every training defense: its type, the defenses that take it, whether optional.
DEFENSE_FIELDS = union_fields(_DEFENSES)
defense_options = config_options(
    _DEFENSES, help={name: f"Defenses: {', '.join(f.owners)}" for name, f in DEFENSE_FIELDS.items()},
    choices={"labels": ("predicted", "true"), "attack": ("fgsm", "rfgsm")},
    default_text="(default: the defense's).",
)


# The fitting options of the scikit-learn models (sklearn-*): one option per field of their fit configs.
SKLEARN_FIELDS = union_fields(FIT_CONFIGS)
_SKLEARN_HELP = {name: text for config in reversed(list(FIT_CONFIGS.values()))
                 for name, text in attribute_help(config).items()}
sklearn_options = config_options(
    FIT_CONFIGS,
    help={name: f"{_SKLEARN_HELP.get(name, name).rstrip('.')}. Models: {', '.join(f.owners)}"
          for name, f in SKLEARN_FIELDS.items()},
    param_types={int: click.IntRange(min=1), float: click.FloatRange(min=0, min_open=True)},
    default_text="(default: the model's).",
)
_RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


def sklearn_params(model: str, given: Mapping[str, Any], defense: str | None) -> dict[str, Any] | None:
    """The fitting options of a scikit-learn ``model`` (``None`` for a torch model), checked: training-recipe
    options or --defense for a scikit-learn model, a fitting option for a torch model or for a scikit-learn
    model that does not take it, are usage errors naming the model."""
    params = given_options(given, SKLEARN_FIELDS)
    if not is_sklearn_model(model):
        if params:
            key = next(iter(params))
            raise click.UsageError(f"{flag(key)} is a fitting option of scikit-learn models "
                                   f"({', '.join(SKLEARN_FIELDS[key].owners)}); model {model!r} does not take it")
        return None
    takes = [f.name for f in fields(FIT_CONFIGS[model])]
    recipe = given_options(given, _RECIPE_FIELDS)
    if recipe:
        raise click.UsageError(f"model {model!r} is fitted by scikit-learn and takes no training-recipe options "
                               f"({', '.join(flag(k) for k in recipe)}); its fitting options: "
                               f"{', '.join(flag(k) for k in takes) or 'none'}")
    if defense is not None:
        raise click.UsageError(f"--defense (adversarial training) needs a torch model; model {model!r} is fitted by "
                               f"scikit-learn")
    for key in params:
        if key not in takes:
            raise click.UsageError(f"model {model!r} does not take {flag(key)}; it takes "
                                   f"{', '.join(flag(k) for k in takes) or 'no fitting options'}")
    return params


def defense_params(defense: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """The defense options the user set, checked against the defense: an option it does not take (or any
    defense option without --defense) is an error, not silently ignored."""
    params = given_options(given, DEFENSE_FIELDS)
    if defense is None:
        if params:
            raise click.UsageError(f"{flag(next(iter(params)))} is an option of adversarial training; add "
                                   f"--defense NAME (see `advlab list defenses`)")
        return {}
    fields = defense_spec(defense).defaults()
    for key in params:
        if key not in fields:
            takes = ", ".join(flag(f) for f in fields) or "no options"
            raise click.UsageError(f"defense {defense!r} does not take {flag(key)}; it takes {takes}")
    return params


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def recipe_from_options(model: str, data: str, values: Mapping[str, Any], defense: str | None = None) -> Recipe:
    """The recipe of ``model`` on ``data`` (with ``defense``'s recommended settings) with the options that were
    given (not ``None``) applied; an optional field given as ``none`` becomes ``None``."""
    base = get_recipe(model, data) if defense is None else defense_recipe(defense, model, data)
    return replace(base, **given_options(values, (f.name for f in fields(Recipe))))


def _run(model: str, data: str, recipe: Recipe | None, device: str | torch.device, seed: int,
         data_root: Path | None, n_train: int | None, callbacks: Sequence[Callback],
         defended: Mapping[str, Any] | None = None, model_options: Mapping[str, Any] | None = None) -> TrainRun:
    """:func:`train_model` (or :func:`~advlab.defenses.train_defended` with ``defended``'s arguments), with the
    user's errors as one-line ``click`` exceptions."""
    dev = resolve_device(device)
    try:
        if defended is not None:
            return train_defended(model, data, recipe=recipe, seed=seed, device=dev, data_root=data_root,
                                  n_train=n_train, callbacks=callbacks, **defended)
        return train_model(model, data, recipe, seed=seed, device=dev, data_root=data_root, n_train=n_train,
                           callbacks=callbacks, model_options=model_options)
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
    """:func:`save_run` (under ``torchrun``: written by process 0, the others wait), with the user's errors as
    one-line ``click`` exceptions; a process other than 0 ends quietly when process 0 failed (it says why)."""
    try:
        return save_run(run, out, overwrite=overwrite)
    except (ValueError, OSError) as err:
        raise click.ClickException(_one_line(err)) from err
    except PeerFailedError:
        raise click.exceptions.Exit(1) from None


@contextmanager
def _distributed(device: str | torch.device) -> Iterator[torch.device]:
    """:func:`~advlab.train.distributed_session` on the resolved ``--device`` (a no-op for one process), with
    its refusals as one-line ``click`` exceptions; warnings show on process 0 only."""
    with ExitStack() as stack:
        try:
            dev = stack.enter_context(distributed_session(resolve_device(device)))
        except ValueError as err:
            raise click.ClickException(_one_line(err)) from err
        with warnings.catch_warnings():
            if not is_main_process():
                warnings.simplefilter("ignore")
            yield dev


def _on_every_process(check: Callable[[], T]) -> T:
    """``check()``, in every process, then agreed on: when it failed anywhere, process 0 raises its error (the
    same mistake in every process, reported once) and the other processes end quietly with its exit status.
    For one process it is just ``check()``."""
    if world_size() == 1:
        return check()
    failure: Exception | None = None
    try:
        result = check()
    except Exception as err:
        failure = err
    if all_true(failure is None):
        return result
    if failure is not None and is_main_process():
        raise failure
    raise click.exceptions.Exit(getattr(failure, "exit_code", 1) if failure is not None else 1)


def _check_batch_size(recipe: Recipe) -> None:
    """The global ``--batch-size`` must split evenly over the processes (checked before ``--out`` is touched)."""
    try:
        check_batch_size(recipe.batch_size)
    except ValueError as err:
        raise click.ClickException(_one_line(err)) from err


def _defended(defense: str | None, eps: float | None, norm: str | None, static: tuple[Path, ...],
              labelled: int | None, held_out: int | None, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The arguments of :func:`~advlab.defenses.train_defended` beyond the run's, or ``None`` without --defense;
    the defense's options without --defense (or one it does not take) are usage errors."""
    options = defense_params(defense, values)
    if defense is None:
        for name, value in (("--eps", eps), ("--norm", norm), ("--labelled", labelled), ("--held-out", held_out)):
            if value is not None:
                raise click.UsageError(f"{name} is an option of adversarial training; add --defense NAME "
                                       f"(see `advlab list defenses`)")
        if static:
            raise click.UsageError("--static is an option of ensemble-at; add --defense ensemble-at")
        return None
    if eps is None:
        raise click.UsageError(f"--defense {defense} needs a budget: add --eps (raw input units, e.g. 0.3 on MNIST)")
    return {"defense": defense, "eps": eps, "norm": norm, "options": options, "static": list(static),
            "labelled": labelled, "held_out": held_out}


_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace a checkpoint already in --out (else the command refuses at once).")


@click.command("train")
@click.option("--model", "model_name", default="cnn-small", show_default=True,
              help="Model name (see `advlab list models`).")
@click.option("--data", default="digits", show_default=True, help="Dataset name (see `advlab list datasets`).")
@recipe_options
@click.option("--defense", type=click.Choice(list_defenses("training")), default=None,
              help="Adversarial training method (see `advlab list defenses`); its recommended recipe is the default.")
@click.option("--eps", type=float, default=None, help="Budget of --defense, raw input units (MNIST linf: 0.3).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None,
              help="Threat model of --defense (default: the defense's).")
@defense_options
@sklearn_options
@click.option("--static", "static", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ensemble-at: a static, separately trained checkpoint (repeat the option for several).")
@click.option("--labelled", type=click.IntRange(min=1), default=None,
              help="vat: how many training examples keep their labels (the rest are used unlabelled).")
@click.option("--held-out", type=click.IntRange(min=0), default=None,
              help="--defense: training examples set aside for the per-epoch robustness check "
                   "[default: min(500, N/10)].")
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
    defense: str | None,
    eps: float | None,
    norm: str | None,
    static: tuple[Path, ...],
    labelled: int | None,
    held_out: int | None,
    n_train: int | None,
    out: Path | None,
    overwrite: bool,
    no_progress: bool,
    device: str,
    seed: int,
    data_root: Path | None,
    **values: Any,
) -> None:
    """Train a zoo model on a dataset, save the checkpoint and print a JSON summary.

    Unset hyper-parameters come from the model's recipe (advlab.train.recipes), or with --defense from the
    defense's recommended recipe; optional ones (--schedule, --grad-clip) also take `none`. A scikit-learn
    model (sklearn-*) is fitted instead, on the flattened images, with its fitting options (--C, --gamma,
    --max-depth, --n-estimators, --n-neighbors, ...; defaults in advlab.train.FIT_CONFIGS) and no recipe;
    an RBF SVM or kNN on all of MNIST takes minutes (--n-train for quick runs). Accuracies in
    the summary are fractions in [0, 1]; train_accuracy is the running accuracy of the last epoch. With
    --defense the progress bar shows clean and robust accuracy (a fixed PGD at --eps) on held-out training
    examples after every epoch, and the checkpoint records the defense and its options.

    \b
    Examples:
      advlab train --model cnn-small --data mnist --epochs 2 --out runs/mnist-cnn
      advlab train --model cnn-small --data mnist --defense fast-at --eps 0.3 --out runs/mnist-fast-at
      advlab train --model sklearn-svm-rbf --data mnist --n-train 10000 --C 10 --out runs/mnist-svm
      torchrun --nproc_per_node 2 -m advlab train --model cnn-small --data mnist \
        --defense fast-at --eps 0.3 --out runs/x

    Under torchrun each process trains on its share of every global --batch-size (DistributedDataParallel);
    process 0 writes the checkpoint and prints the summary.
    """
    with _distributed(device) as dev:

        def parse() -> tuple[dict[str, Any] | None, Recipe | None, dict[str, Any] | None]:
            fit_options = sklearn_params(model_name, values, defense)
            defended = _defended(defense, eps, norm, static, labelled, held_out, values)
            if fit_options is not None:  # scikit-learn: fitted, no recipe
                return defended, None, fit_options
            recipe = recipe_from_options(model_name, data, values, defense)
            _check_batch_size(recipe)
            return defended, recipe, None

        defended, recipe, fit_options = _on_every_process(parse)
        show_progress = not no_progress and fit_options is None
        default_out = Path("runs") / (f"{model_name}-{data}" + (f"-{defense}" if defense else ""))
        target = out if out is not None else default_out
        with ExitStack() as stack:
            if is_main_process():  # process 0 alone holds --out; the others wait for its verdict
                target = _on_every_process(lambda: stack.enter_context(_reserved(target, overwrite)))
            else:
                _on_every_process(lambda: target)
            run = _run(model_name, data, recipe, dev, seed, data_root, n_train,
                       [ProgressBar()] if show_progress else [], defended, fit_options)
            path = _save(run, target, overwrite)
        if is_main_process():
            echo_json({**run.summary, "checkpoint": str(path)})


COMMANDS = [train_command]
