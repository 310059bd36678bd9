"""Validation at the attack boundary: budgets, inputs, labels and the model's outputs.

Built on :mod:`advlab._validate` (the rule: wrong type ``TypeError``, wrong value ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_labels


def model_bounds(model: nn.Module | Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """The model's input bounds: ``Classifier.bounds``, else a ``bounds`` attribute, else ``(0, 1)``."""
    bounds = getattr(model, "bounds", (0.0, 1.0))
    return float(bounds[0]), float(bounds[1])


def validate_eps(eps: float | Sequence[float] | Tensor) -> tuple[float, ...]:
    """Normalises ``eps`` to a non-empty tuple of finite non-negative floats.

    Example:
        >>> validate_eps([0.1, 0.3])
        (0.1, 0.3)
    """
    values: Any
    if isinstance(eps, Tensor):
        values = eps.flatten().tolist()
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
        values = [eps]
    else:
        values = eps
    if isinstance(values, (str, bytes, bool)) or not hasattr(values, "__iter__"):
        raise TypeError(f"eps must be a number or a sequence of numbers, got {type(eps).__name__}")
    out = []
    for e in values:
        if isinstance(e, bool) or not isinstance(e, (int, float)):
            raise TypeError(f"eps values must be numbers, got {e!r}")
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eps must be finite and non-negative, got {e}; budgets are in raw input units")
        out.append(float(e))
    if not out:
        raise ValueError("eps is empty; give at least one budget")
    return tuple(out)


def validate_inputs(x: Tensor, y: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Checks ``x`` (finite float batch within bounds, non-empty) and ``y`` (integer ``(N,)``) in one pass
    over ``x``; returns ``y`` on ``x``'s device as int64."""
    check_batch(x, bounds)
    return check_labels(y, x.shape[0], device=x.device)


def check_logits(logits: Tensor, n: int) -> None:
    """Rejects outputs that are not ``(N, K)`` finite logits, in particular probability rows."""
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape (N, K); got {tuple(logits.shape)} for N={n}")
    if logits.shape[1] < 2:
        raise ValueError("the model must return at least 2 class scores")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model returned NaN or inf logits on the clean inputs")
    rows_sum_to_one = torch.allclose(logits.sum(dim=1), torch.ones_like(logits[:, 0]), atol=1e-4)
    if bool((logits >= 0).all()) and rows_sum_to_one:
        raise ValueError(
            "the model returns probabilities (non-negative rows summing to 1), but attacks need logits; "
            "remove the final softmax (or wrap the model to return log-probabilities)"
        )


def check_label_range(logits: Tensor, **labels: Tensor | None) -> None:
    """Each of ``labels`` (by name) must hold class indices below the number of classes of ``logits``."""
    k = logits.shape[1]
    for what, values in labels.items():
        if values is not None and (int(values.max()) >= k or int(values.min()) < 0):
            raise ValueError(
                f"{what} must be class indices in [0, {k - 1}] for this model, "
                f"got values in [{int(values.min())}, {int(values.max())}]"
            )


def clean_check(y: Tensor, true_labels: Tensor | None) -> Callable[[Tensor], None]:
    """A check of a chunk's clean logits and of its labels against the number of classes they show."""

    def check(logits: Tensor) -> None:
        check_logits(logits, y.shape[0])
        check_label_range(logits, labels=y, true_labels=true_labels)

    return check
