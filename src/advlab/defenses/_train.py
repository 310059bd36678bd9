"""``train_defended``: a standard run of the training engine with a training defense's step function, its
recommended recipe, a held-out robustness check every epoch, and the defense recorded in the summary."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_float, check_int, check_optional
from advlab.data import dataset_info
from advlab.defenses._monitor import MonitorConfig, RobustnessMonitor
from advlab.defenses._registry import defense_spec, list_defenses
from advlab.models import load_checkpoint
from advlab.train import Callback, Recipe, TrainRun, get_recipe, train_model
from advlab.train.run import TrainData, load_training_data

StaticModel = nn.Module | str | os.PathLike[str]


def defense_recipe(defense: str, model: str, dataset: str | None, **overrides: Any) -> Recipe:
    """The recipe of ``model`` on ``dataset`` with ``defense``'s recommended settings, then ``overrides``
    (``None`` values ignored, as :func:`advlab.train.get_recipe`)."""
    spec = _training_spec(defense)
    return get_recipe(model, dataset, **{**spec.recipe_overrides(model, dataset),
                                         **{k: v for k, v in overrides.items() if v is not None}})


def train_defended(
    model: str,
    data: TrainData,
    defense: str,
    *,
    eps: float,
    norm: str | None = None,
    options: Mapping[str, Any] | Any = None,
    recipe: Recipe | None = None,
    model_options: Mapping[str, Any] | None = None,
    static: Sequence[StaticModel] = (),
    labelled: int | None = None,
    held_out: int | None = None,
    check_overfitting: bool | None = None,
    restore_best: bool | None = None,
    dataset: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    callbacks: Sequence[Callback] = (),
    threads: int | None = None,
) -> TrainRun:
    """Trains zoo model ``model`` on ``data`` with the training defense ``defense`` (``list_defenses("training")``).

    What happens: the data are loaded (as :func:`advlab.train.train_model`); ``n_train`` keeps a random subset;
    ``held_out`` examples are set aside (never trained on) for a :class:`RobustnessMonitor` that reports clean,
    FGSM and PGD accuracy at ``eps`` after every epoch (and, for ``fast-at`` by default, flags catastrophic
    overfitting and restores the most robust epoch); for a semi-supervised defense (``vat``) all but
    ``labelled`` examples lose their labels; then :func:`~advlab.train.train_model` runs with the defense's step
    function. The recipe is the model's, with the defense's recommended settings (:func:`defense_recipe`) unless
    ``recipe`` is given. ``run.summary`` gains ``defense`` (name, eps, norm, options) and ``monitor``; a
    checkpoint saved with :func:`~advlab.train.save_run` records both.

    Args:
        model: a registered model name.
        data: a dataset name or tensors, as for :func:`~advlab.train.train_model`.
        defense: a registered training defense.
        eps: the budget in raw input units (> 0, and within the range of the inputs' bounds).
        norm: the norm of the threat model, default the defense's first (``vat``: ``l2``).
        options: the defense's options (a mapping, or its config dataclass); an option it does not take is a
            ``ValueError`` that lists its options.
        recipe: the full recipe; default :func:`defense_recipe`.
        model_options: hyper-parameters of the zoo model; default the defense's recommended ones for
            ``model`` on the dataset (``DefenseSpec.model_options``, e.g. no dropout), ``{}`` for none.
        static: for ``ensemble-at``, the static models (modules or checkpoint directories), with the input shape
            and the number of classes of the model trained.
        labelled: for ``vat``, how many training examples keep their labels (default all).
        held_out: examples of the training split set aside for the monitor; default ``min(500, N // 10)``;
            0 turns the monitor off.
        check_overfitting, restore_best: the monitor's check (default: on, with restoring, for ``fast-at``).
        dataset, seed, device, data_root, callbacks, threads: as :func:`~advlab.train.train_model`.
        n_train: train on a random subset of this many examples (before the held-out split).

    Example:
        >>> run = train_defended("softmax", "digits", "fgsm-at", eps=0.1, recipe=get_recipe("softmax", epochs=1),
        ...                      held_out=50, threads=1)
        >>> run.summary["defense"]["name"], len(run.summary["monitor"]["epochs"])
        ('fgsm-at', 1)
    """
    spec = _training_spec(defense)
    config = spec.make_config(options)
    norm = spec.norms[0] if norm is None else norm
    if norm not in spec.norms:
        raise ValueError(f"defense {defense!r} defends the norm(s) {', '.join(spec.norms)}, got norm={norm!r}")
    check_float("eps", eps, inclusive=False)
    check_optional("labelled", labelled, check_int)
    check_optional("held_out", held_out, check_int, minimum=0)
    check_optional("check_overfitting", check_overfitting, check_bool)
    check_optional("restore_best", restore_best, check_bool)
    check_int("seed", seed, minimum=-(2**63), maximum=2**64 - 1)
    if labelled is not None and not spec.semi_supervised:
        raise ValueError(f"labelled= is for semi-supervised defenses ({', '.join(_semi())}), not {defense!r}")
    if static and not spec.uses_static:
        raise ValueError(f"static models are for ensemble-at, not {defense!r}; drop static=")

    x_train, y_train, test, dataset = load_training_data(data, dataset, data_root)
    _check_eps(eps, norm, x_train)
    gen = torch.Generator().manual_seed(seed)
    if n_train is not None and n_train < len(x_train):
        keep = torch.randperm(len(x_train), generator=gen)[:n_train]
        x_train, y_train = x_train[keep], y_train[keep]
    n_held = min(500, len(x_train) // 10) if held_out is None else held_out
    if n_held >= len(x_train):
        raise ValueError(f"held_out={n_held} leaves no training examples out of {len(x_train)}; lower held_out")
    order = torch.randperm(len(x_train), generator=gen)
    x_held, y_held = x_train[order[:n_held]], y_train[order[:n_held]]
    x_train, y_train = x_train[order[n_held:]], y_train[order[n_held:]]
    if labelled is not None:
        if labelled > len(x_train):
            raise ValueError(f"labelled={labelled} exceeds the {len(x_train)} training examples; lower it")
        y_train = y_train.clone()
        y_train[torch.randperm(len(y_train), generator=gen)[labelled:]] = -1

    dev = torch.device("cpu") if device is None else torch.device(device)
    statics = [_load_static(m, i, x_train, y_train, test, dataset, dev) for i, m in enumerate(static)]
    step = spec.build(config, eps=eps, norm=norm, static=statics)
    if recipe is None:
        recipe = defense_recipe(defense, model, dataset)
    cbs: list[Callback] = []
    monitor = None
    if n_held > 0:
        on = spec.checks_overfitting if check_overfitting is None else check_overfitting
        monitor = RobustnessMonitor(
            x_held, y_held, eps=eps, norm=norm, config=MonitorConfig(), check_overfitting=on,
            restore_best=(spec.checks_overfitting if restore_best is None else restore_best) and on, seed=seed,
        )
        cbs.append(monitor)
    data_arg: TrainData = (x_train, y_train) if test is None else (x_train, y_train, test[0], test[1])
    if model_options is None:
        model_options = spec.recommended_model_options(model, dataset)
    run = train_model(model, data_arg, recipe, dataset=dataset, seed=seed, device=dev, step=step,
                      callbacks=[*cbs, *callbacks], threads=threads, model_options=model_options)
    run.summary["defense"] = {
        "name": defense, "eps": eps, "norm": norm, "options": _config_dict(config),
        "static": [str(m) if not isinstance(m, nn.Module) else (getattr(m, "model_name", None) or "module")
                   for m in static],
        "labelled": labelled, "held_out": n_held,
    }
    run.summary["n_train"] = len(x_train)
    if monitor is not None:
        run.summary["monitor"] = monitor.report()
    return run


def _training_spec(defense: str) -> Any:
    if not isinstance(defense, str) or defense not in list_defenses("training"):
        raise ValueError(f"unknown training defense {defense!r}; valid names: {', '.join(list_defenses('training'))}")
    return defense_spec(defense)


def _semi() -> list[str]:
    return [n for n in list_defenses("training") if defense_spec(n).semi_supervised]


def _config_dict(config: Any) -> dict[str, Any]:
    return {} if config is None else dataclasses.asdict(config)


def _check_eps(eps: float, norm: str, x: Tensor) -> None:
    """``eps`` must not exceed the largest distance inside the inputs' bounds (0..1 for every dataset here)."""
    lo, hi = 0.0, 1.0
    dim = math.prod(x.shape[1:])
    limit = {"linf": hi - lo, "l2": (hi - lo) * math.sqrt(dim), "l1": (hi - lo) * dim}[norm]
    if eps > limit:
        raise ValueError(f"eps={eps} exceeds the largest {norm} distance within the data's bounds [{lo:g}, {hi:g}] "
                         f"({limit:g}); give eps in raw input units (MNIST linf: e.g. 0.3)")


def _load_static(m: StaticModel, i: int, x: Tensor, y: Tensor, test: tuple[Tensor, Tensor] | None,
                 dataset: str | None, dev: torch.device) -> nn.Module:
    """A static model for ensemble-at, checked against the training data's input shape and classes."""
    module = m if isinstance(m, nn.Module) else load_checkpoint(m, device=dev)
    module = module.to(dev).eval()
    shape = getattr(module, "model_config", {}).get("in_shape")
    if shape is not None and tuple(shape) != tuple(x.shape[1:]):
        raise ValueError(f"static model {i} takes inputs of shape {tuple(shape)} but the training data are "
                         f"{tuple(x.shape[1:])}; use static models trained on the same dataset")
    if dataset is not None:
        classes = dataset_info(dataset).num_classes
    else:
        labels = y[y >= 0] if test is None else torch.cat([y[y >= 0], test[1]])
        classes = max(int(labels.max()) + 1, 2)
    with torch.no_grad():
        try:
            out = module(x[:2].to(dev))
        except RuntimeError as err:
            raise ValueError(f"static model {i} fails on inputs of shape {tuple(x.shape[1:])} ({err}); use static "
                             f"models trained on the same dataset") from err
    if out.ndim != 2 or out.shape[1] != classes:
        raise ValueError(f"static model {i} returns {tuple(out.shape[1:])} outputs per example but the data have "
                         f"{classes} classes; use static models trained on the same dataset")
    return module
