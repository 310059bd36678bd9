"""One standard training run: :func:`train_model` (data, seeding, model, recipe, test accuracy, summary) and
:func:`save_run` (its checkpoint).

The command line (``advlab train``, ``advlab demo``), the test fixtures and the benchmarks all train through
these two functions, so a model trained by any of them with the same settings has the same weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advlab._provenance import versions
from advlab._validate import check_int, check_optional
from advlab.data import list_datasets, load_dataset
from advlab.models import Classifier, create_model, list_models, save_checkpoint
from advlab.models._sklearn import is_sklearn_model
from advlab.train._sklearn_fit import check_sklearn_run, fit_sklearn
from advlab.train.callbacks import Callback
from advlab.train.distributed import PeerFailedError, all_true, is_main_process, rank_seed, world_size
from advlab.train.loop import _SEED_MAX, _SEED_MIN, TrainHistory, evaluate_accuracy, fit
from advlab.train.recipes import Recipe, get_recipe, prepare_model
from advlab.train.steps import StepFn, standard_step

__all__ = ["TrainRun", "load_training_data", "save_run", "train_model"]

TrainData = str | tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]

# The summary entries that go into a checkpoint's ``metrics``.
_METRICS = ("train_accuracy", "test_accuracy", "loss", "epochs", "seconds", "seconds_per_epoch", "n_train", "n_test")


@dataclass
class TrainRun:
    """A finished training run.

    Attributes:
        model: the trained model, in eval mode, on the run's device.
        history: what :func:`~advlab.train.fit` returned, with ``test_accuracy`` set when there was a test split.
        summary: JSON-ready numbers and settings of the run: model, data, epochs, seconds (of ``fit``;
            ``prepare_seconds``: of :func:`~advlab.train.prepare_model`), accuracies
            (fractions in [0, 1]; ``test_accuracy`` is ``None`` without a test split), loss of the last epoch,
            sizes, seed, device, threads, the recipe and library versions.
    """

    model: Classifier
    history: TrainHistory
    summary: dict[str, Any]


def train_model(
    model: str,
    data: TrainData,
    recipe: Recipe | None = None,
    *,
    dataset: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    callbacks: Sequence[Callback] = (),
    threads: int | None = None,
    step: StepFn = standard_step,
    model_options: Mapping[str, Any] | None = None,
) -> TrainRun:
    """Builds the zoo model ``model``, trains it on ``data`` with ``recipe`` and tests it.

    The steps: load the data (both splits of a registered dataset, or the given tensors); keep a random
    subset of ``n_train`` training examples when asked (drawn from ``seed``); seed torch's global RNG
    (dropout draws from it) and the model's initialisation from ``seed``; :func:`~advlab.models.create_model`;
    :func:`~advlab.train.prepare_model`; :func:`~advlab.train.fit` with the recipe; test accuracy; summary.
    The global RNG is seeded inside :func:`torch.random.fork_rng`, so the caller's RNG state is the same
    afterwards. On CPU the same arguments (and the same number of ``threads``) give bitwise the same
    weights and numbers.

    Under ``torchrun`` (a process group of several processes, see :mod:`advlab.train.distributed`) every
    process calls it with the same arguments: the data, subset and initialisation are the same everywhere,
    ``fit`` trains with ``DistributedDataParallel`` on a share of every global batch, the global RNG (dropout)
    is seeded with :func:`~advlab.train.distributed.rank_seed` (process 0: ``seed``), and every process
    returns the same model and history; the summary gains ``world_size``.

    A scikit-learn model (``sklearn-*``, see :func:`advlab.models.from_sklearn`) is fitted instead of trained:
    the estimator is fitted on the flattened training inputs (``seed`` is its ``random_state``), converted to a
    :class:`~advlab.models.Classifier` without normalisation and tested; the history holds one "epoch" (the fit:
    seconds, train accuracy, cross-entropy of the scores, agreement with the estimator's ``predict``), the
    summary's ``recipe`` the estimator and its fitting options. Its fitting options go in ``model_options``
    (``advlab.train.FIT_CONFIGS[name]``: e.g. ``C``/``gamma`` of ``sklearn-svm-rbf``); a ``recipe``, callbacks
    or a step function (adversarial training) are refused with a ``ValueError``. The fit runs on the CPU; an RBF
    SVM or kNN on all of MNIST takes minutes, so use ``n_train`` for quick runs.

    Args:
        model: a registered model name (``advlab.list_models()``).
        data: a dataset name (``advlab.list_datasets()``), or tensors ``(x_train, y_train)`` or
            ``(x_train, y_train, x_test, y_test)``: ``x`` float ``(N, C, H, W)`` in the model's bounds
            ``[0, 1]``, ``y`` int64 ``(N,)``.
        recipe: the hyper-parameters; default :func:`~advlab.train.get_recipe` of ``model`` on the dataset.
        dataset: with tensor ``data``, the registered dataset they come from (its shape, classes and
            normalisation build the model); default: shape from ``x_train``, classes from the largest label,
            no normalisation. Ignored (must match, if given) when ``data`` is a name.
        seed: seeds the subset, the initialisation, dropout and the data order.
        device: where to train (default CPU); the model stays there.
        data_root: folder of the dataset files (see :func:`advlab.load_dataset`).
        n_train: train on a random subset of this many examples (>= 1); ``None`` or more than there are
            uses them all.
        callbacks: :class:`~advlab.train.Callback` objects for ``fit`` (e.g. a progress bar).
        threads: torch's intra-op threads during the run (restored after); ``None`` leaves them.
        step: the step function (default :func:`~advlab.train.standard_step`); adversarial training passes
            its own (see :func:`advlab.defenses.train_defended`).
        model_options: hyper-parameters of the zoo model (``create_model(model, **model_options)``, e.g.
            ``{"dropout": 0.0}``); recorded in the checkpoint's model config. For a ``sklearn-*`` model: its
            fitting options (e.g. ``{"C": 10.0}``), recorded in the summary and the checkpoint's ``extra``.

    Returns:
        A :class:`TrainRun`.

    Raises:
        ValueError: an unknown model or dataset name, malformed data or settings out of range (including
            what :func:`~advlab.train.fit` rejects). ``TypeError`` for a setting of the wrong type (a float
            or bool for an int, a dict for a recipe); ``FileNotFoundError`` when the dataset files are not
            under ``data_root``; ``FloatingPointError`` when the loss diverges.

    Example:
        >>> run = train_model("softmax", "digits", get_recipe("softmax", epochs=1), n_train=200, threads=1)
        >>> 0.0 <= run.summary["test_accuracy"] <= 1.0
        True
    """
    if not isinstance(model, str) or model not in list_models():
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(list_models())}")
    if dataset is not None and dataset not in list_datasets():
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(list_datasets())}")
    check_int("seed", seed, minimum=_SEED_MIN, maximum=_SEED_MAX)
    check_optional("n_train", n_train, check_int)
    check_optional("threads", threads, check_int)
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an advlab.train.Recipe or None, got {type(recipe).__name__}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    sklearn_config = None
    if is_sklearn_model(model):  # refuse torch-only settings before the data is loaded
        sklearn_config = check_sklearn_run(model, recipe, callbacks, step is standard_step, model_options)

    x_train, y_train, test, dataset = load_training_data(data, dataset, data_root)
    if n_train is not None and n_train < len(x_train):
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n_train]
        x_train, y_train = x_train[keep], y_train[keep]
    if dataset is not None:
        shape: dict[str, Any] = {"dataset": dataset}
    else:
        labels = y_train if test is None else torch.cat([y_train, test[1]])
        shape = {"in_shape": tuple(x_train.shape[1:]), "num_classes": max(int(labels.max()) + 1, 2)}
    if sklearn_config is not None:
        return _fit_sklearn(model, sklearn_config, x_train, y_train, test, dataset, shape, seed, dev, threads,
                            model_options)
    if recipe is None:
        recipe = get_recipe(model, dataset)

    with _num_threads(threads), torch.random.fork_rng(devices=_cuda_devices(dev)):
        torch.manual_seed(rank_seed(seed))  # dropout and any other use of the global RNG (per process)
        net = create_model(model, generator=torch.Generator().manual_seed(seed), **shape, **(model_options or {}))
        t0 = time.perf_counter()
        prepare_model(net, x_train, generator=torch.Generator().manual_seed(seed))
        prepare_seconds = time.perf_counter() - t0
        net.to(dev)
        history = fit(net, x_train, y_train, seed=seed, device=dev, callbacks=callbacks, step=step,
                      **recipe.fit_kwargs())
        if test is not None:
            history.test_accuracy = evaluate_accuracy(net, *test)
        torch_threads = torch.get_num_threads()
    net.eval()
    summary: dict[str, Any] = {
        "model": model,
        "data": dataset,
        "epochs": len(history.epochs),
        "seconds": round(history.seconds, 3),
        "seconds_per_epoch": round(history.seconds_per_epoch, 3),
        "prepare_seconds": round(prepare_seconds, 3),
        "train_accuracy": history.train_accuracy,
        "test_accuracy": history.test_accuracy,
        "loss": history.epochs[-1].loss if history.epochs else None,
        "n_train": len(x_train),
        "n_test": 0 if test is None else len(test[0]),
        "seed": seed,
        "device": str(dev),
        "torch_threads": torch_threads,
        "recipe": recipe.to_dict(),
        "model_options": dict(model_options or {}),
        "versions": versions(),
    }
    if world_size() > 1:
        summary["world_size"] = world_size()
    return TrainRun(model=net, history=history, summary=summary)


def _fit_sklearn(model: str, config: Any, x_train: Tensor, y_train: Tensor, test: tuple[Tensor, Tensor] | None,
                 dataset: str | None, shape: Mapping[str, Any], seed: int, dev: torch.device, threads: int | None,
                 options: Mapping[str, Any] | None) -> TrainRun:
    """:func:`train_model` of a ``sklearn-*`` model (see :mod:`advlab.train._sklearn_fit`)."""
    if "dataset" in shape:
        from advlab.data import dataset_info

        info = dataset_info(str(shape["dataset"]))
        shape = {"in_shape": tuple(info.shape), "num_classes": info.num_classes}
    with _num_threads(threads), _sklearn_threads(threads):
        net, history, summary = fit_sklearn(model, config, x_train, y_train, test, dataset=dataset, shape=shape,
                                            seed=seed, device=dev, options=options)
    return TrainRun(model=net, history=history, summary=summary)


@contextmanager
def _sklearn_threads(threads: int | None) -> Iterator[None]:
    """Limits scikit-learn's native thread pools (OpenMP, BLAS) to ``threads`` (``None``: unchanged)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


def save_run(run: TrainRun, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Saves the model of ``run`` as a checkpoint in ``out`` (see :func:`advlab.save_checkpoint`).

    The checkpoint's metadata records the run's metrics (accuracies, loss, epochs, seconds, sizes) and
    seed, its dataset, and under ``extra`` the recipe, the device and the per-epoch history. A checkpoint
    already in ``out`` is replaced only with ``overwrite=True`` (else
    :class:`~advlab.models.CheckpointExistsError`), atomically. To have ``out`` checked and locked before
    the training starts, train inside :func:`advlab.models.reserve_checkpoint` (as ``advlab train`` does).

    With several processes (``torchrun``) every process calls it: process 0 writes the checkpoint while the
    others wait, and all return ``out`` once it is complete (when process 0 fails to write it, it raises its
    own error and the others :class:`~advlab.train.distributed.PeerFailedError`).

    Example:
        >>> import tempfile
        >>> run = train_model("softmax", "digits", get_recipe("softmax", epochs=1), n_train=200, threads=1)
        >>> (save_run(run, tempfile.mkdtemp()) / "model.json").is_file()
        True
    """
    if world_size() > 1:
        return _save_on_main(run, out, overwrite)
    return _write_run(run, out, overwrite)


def _write_run(run: TrainRun, out: str | os.PathLike[str], overwrite: bool) -> Path:
    """The checkpoint of ``run`` in ``out``, written by this process."""
    s = run.summary
    metrics = {k: s[k] for k in _METRICS}
    extra = {"recipe": s["recipe"], "device": s["device"], "history": run.history.to_dict()}
    for key in ("defense", "monitor", "world_size"):  # adversarial training (train_defended); torchrun
        if key in s:
            extra[key] = s[key]
    return save_checkpoint(run.model, out, dataset=s["data"], metrics=metrics, seed=s["seed"], extra=extra,
                           overwrite=overwrite)


def _save_on_main(run: TrainRun, out: str | os.PathLike[str], overwrite: bool) -> Path:
    """:func:`save_run` by process 0 of a process group; the collective :func:`all_true` after it is the
    barrier the other processes wait at, and tells them whether the checkpoint was written."""
    if not is_main_process():
        if not all_true(True):
            raise PeerFailedError(f"process 0 failed to write the checkpoint to {str(out)!r}; see its error")
        return Path(out)
    saved = False
    try:
        path = _write_run(run, out, overwrite)
        saved = True
    finally:
        all_true(saved)
    return path


def load_training_data(
    data: TrainData, dataset: str | None, root: str | os.PathLike[str] | None
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None, str | None]:
    """``(x_train, y_train, (x_test, y_test) or None, dataset name or None)`` of ``data`` (a dataset name or
    tensors, see :func:`train_model`), checked."""
    if isinstance(data, str):
        if data not in list_datasets():
            raise ValueError(f"unknown dataset {data!r}; valid names: {', '.join(list_datasets())}")
        if dataset is not None and dataset != data:
            raise ValueError(f"dataset={dataset!r} contradicts data={data!r}; pass one name")
        x_train, y_train = load_dataset(data, "train", root=root)
        return x_train, y_train, load_dataset(data, "test", root=root), data
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4) or not all(
        isinstance(t, Tensor) for t in data
    ):
        raise ValueError(
            "data must be a dataset name or a tuple of tensors (x_train, y_train) or "
            f"(x_train, y_train, x_test, y_test), got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    for i in range(0, len(data), 2):
        x, y = data[i], data[i + 1]
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"data[{i}] and data[{i + 1}] must be inputs (N, C, H, W) and labels (N,) with the same N >= 1, "
                f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
    test = (data[2], data[3]) if len(data) == 4 else None
    return data[0], data[1], test, dataset


def _cuda_devices(dev: torch.device) -> list[int]:
    """The CUDA devices whose RNG :func:`torch.random.fork_rng` must save and restore for a run on ``dev``."""
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


@contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """Sets torch's intra-op threads to ``threads`` (``None``: unchanged) and restores them after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
