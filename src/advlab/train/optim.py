"""Optimizers and per-step learning-rate schedules by name."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from advlab._validate import check_float, check_int

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "onecycle")


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Builds an optimizer by name.

    Args:
        params: the parameters to optimise.
        name: ``"adam"``, ``"adamw"`` (decoupled weight decay, Loshchilov & Hutter 2019) or ``"sgd"``.
        lr: learning rate (> 0).
        weight_decay: L2 penalty (adam, sgd) or decoupled decay (adamw), >= 0.
        momentum: SGD momentum in ``[0, 1)`` (ignored by adam/adamw).
        nesterov: Nesterov momentum for SGD (needs ``momentum > 0``).

    Example:
        >>> opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), "sgd", lr=0.1, nesterov=True)
    """
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    check_float("lr", lr, inclusive=False)
    check_float("weight_decay", weight_decay)
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    check_float("momentum", momentum, maximum=1.0, max_inclusive=False)
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9) or nesterov=False")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str | None, *, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Builds a learning-rate schedule that is stepped once per batch.

    ``"cosine"`` anneals each group's learning rate from its initial value to 0 over ``total_steps``
    (Loshchilov & Hutter 2017, without restarts); ``"onecycle"`` warms up from 1/25 of the initial learning
    rate to the initial one over the first 30 % of the steps, then anneals it to ~0 (Smith & Topin 2019;
    ``torch.optim.lr_scheduler.OneCycleLR``), cycling momentum (SGD) or Adam's beta1 inversely.
    ``None`` keeps the learning rate constant.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        name: ``None``, ``"cosine"`` or ``"onecycle"``.
        total_steps: number of optimizer steps of the whole run (> 0).
    """
    if name is None or name == "none":
        return None
    if not isinstance(name, str) or name.lower() not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; use None or one of {', '.join(SCHEDULES)}")
    check_int("total_steps", total_steps)
    name = name.lower()
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    max_lr = [group["lr"] for group in optimizer.param_groups]
    # Cycle momentum (or Adam's beta1) only where the optimizer has one.
    cycle_momentum = "betas" in optimizer.defaults or float(optimizer.defaults.get("momentum", 0.0)) > 0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, cycle_momentum=cycle_momentum
    )
