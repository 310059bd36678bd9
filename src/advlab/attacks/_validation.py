"""Validation at the attack boundary: budgets, inputs, labels and the model's outputs.

Built on :mod:`advlab._validate` (the rule: wrong type ``TypeError``, wrong value ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_labels


def model_bounds(model: nn.Module | Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """The model's input bounds: ``Classifier.bounds``, else a ``bounds`` attribute, else ``(0, 1)``."""
    bounds = getattr(model, "bounds", (0.0, 1.0))
    return float(bounds[0]), float(bounds[1])


def validate_eps(eps: float | Sequence[float] | Tensor | np.ndarray) -> tuple[float, ...]:
    """Normalises ``eps`` to a non-empty tuple of finite non-negative floats.

    Accepts a Python or NumPy number (``np.float32(0.1)`` becomes ``0.1``: single-precision values keep their
    shortest decimal form), a sequence of them, a NumPy array or a tensor; booleans are refused
    (``TypeError``).

    Example:
        >>> validate_eps([0.1, 0.3])
        (0.1, 0.3)
        >>> import numpy as np
        >>> validate_eps(np.float32(0.1))
        (0.1,)
    """
    values: Any = eps
    if isinstance(eps, Tensor):
        t = eps.detach().cpu()
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"eps must hold real numbers, got a tensor of dtype {t.dtype}")
        values = (t.to(torch.float32) if t.is_floating_point() and t.dtype != torch.float64 else t).numpy()
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            raise TypeError(f"eps must hold real numbers, got an array of dtype {values.dtype}")
        values = list(values.ravel())
    elif _is_number(values):
        values = [values]
    if isinstance(values, (str, bytes)) or _is_bool(values) or not hasattr(values, "__iter__"):
        raise TypeError(f"eps must be a number or a sequence of numbers, got {type(eps).__name__}")
    out = []
    for e in values:
        if not _is_number(e):
            raise TypeError(f"eps values must be numbers, got {type(e).__name__} {e!r}")
        # float32/float16 scalars: their shortest decimal form (0.1, not 0.10000000149011612)
        f = float(str(e)) if isinstance(e, np.floating) and e.dtype.itemsize < 8 else float(e)
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"eps must be finite and non-negative, got {e}; budgets are in raw input units")
        out.append(f)
    if not out:
        raise ValueError("eps is empty; give at least one budget")
    return tuple(out)


def _is_bool(value: object) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_number(value: object) -> bool:
    """A real number (Python or NumPy scalar), not a boolean."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def validate_inputs(x: Tensor, y: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Checks ``x`` (finite float batch within bounds, non-empty) and ``y`` (integer ``(N,)``) in one pass
    over ``x``; returns ``y`` on ``x``'s device as int64."""
    check_batch(x, bounds)
    return check_labels(y, x.shape[0], device=x.device)


def _row_sum_tolerance(logits: Tensor) -> float:
    """Relative tolerance within which row sums of probabilities computed in ``logits.dtype`` agree."""
    eps = torch.finfo(logits.dtype).eps if logits.is_floating_point() else 0.0
    return max(1e-5, 4.0 * math.sqrt(logits.shape[1]) * eps)


def _distinct_rows(logits: Tensor, tol: float) -> bool:
    """Whether at least two rows of ``logits`` differ (beyond ``tol`` relative to their scale)."""
    scale = float(logits.abs().amax()) if logits.numel() else 0.0
    if logits.shape[0] < 2:
        return False
    return bool((logits - logits[:1]).abs().amax() > tol * max(scale, 1e-30))


def check_input_shape(model: object, x: Tensor) -> None:
    """When the model records the shape of one input (``Classifier.model_config["in_shape"]``, e.g.
    ``(C, H, W)``), ``x`` must be ``(N, *in_shape)``: a missing channel dimension or a channels-last (NHWC)
    batch raises ``ValueError`` naming the fix, rather than failing deep inside the model or, worse,
    being broadcast against the normalisation into a wrong result."""
    config = getattr(model, "model_config", None)
    in_shape = config.get("in_shape") if isinstance(config, dict) else None
    if not isinstance(in_shape, (list, tuple)) or not all(isinstance(d, int) for d in in_shape):
        return
    want, got = tuple(in_shape), tuple(x.shape[1:])
    if got == want:
        return
    shape = f"(N, {', '.join(str(d) for d in want)})"
    msg = f"x has examples of shape {got} but the model takes {want}: x must be {shape}"
    if len(want) >= 2 and got == want[1:] and want[0] == 1:
        msg += "; add the channel dimension with x.unsqueeze(1)"
    elif len(want) == 3 and got == (*want[1:], want[0]):
        msg += "; x looks channels-last (N, H, W, C): use x.permute(0, 3, 1, 2) for channels-first"
    elif math.prod(got) == math.prod(want):
        msg += f"; reshape it with x.reshape(-1, {', '.join(str(d) for d in want)})"
    raise ValueError(msg)


def check_logits(logits: Tensor, n: int) -> None:
    """Rejects outputs that are not ``(N, K)`` finite logits, in particular probabilities in disguise.

    Refused (``ValueError``) when certain: non-negative rows summing to 1 (softmax outputs), and non-negative
    rows that all share one positive sum across at least two different rows (e.g. ``100 * softmax``).
    Log-probabilities are accepted: they are logits up to a per-row constant. Doubtful cases (all outputs
    in ``[0, 1]``, ...) are not refused here; see :func:`logits_doubts`.
    """
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape (N, K); got {tuple(logits.shape)} for N={n}")
    if logits.shape[1] < 2:
        raise ValueError("the model must return at least 2 class scores")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model returned NaN or inf logits on the clean inputs")
    if not bool((logits >= 0).all()):
        return
    sums = logits.detach().double().sum(dim=1)
    if torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError(
            "the model returns probabilities (non-negative rows summing to 1), but attacks need logits; "
            "remove the final softmax (or wrap the model to return log-probabilities)"
        )
    tol = _row_sum_tolerance(logits)
    top = float(sums.abs().max())
    if top > 0 and float(sums.max() - sums.min()) <= tol * top and _distinct_rows(logits.detach(), tol):
        raise ValueError(
            f"the model returns scaled probabilities (non-negative rows that all sum to {float(sums[0]):.6g}), "
            f"but attacks need logits: gradients through a softmax saturate and the attack would overstate "
            f"robustness; remove the final softmax and scaling (or return log-probabilities)"
        )


def logits_doubts(logits: Tensor) -> list[str]:
    """Reasons to doubt that ``logits`` (finite, ``(N, K)``, already past :func:`check_logits`) are logits,
    each a sentence for a :class:`~advlab.attacks.RobustnessWarning`; empty when none.

    Doubtful: every output in ``[0, 1]`` (sigmoid scores or probabilities), or non-negative rows of one
    common sum that cannot be confirmed as probabilities because all rows are alike (e.g. one example).
    Log-probabilities raise no doubt.
    """
    if logits.numel() == 0:
        return []
    low, high = float(logits.min()), float(logits.max())
    doubts = []
    if low >= 0.0 and high <= 1.0:
        doubts.append(
            "every output of the model lies in [0, 1], as sigmoid scores or probabilities do; attacks need "
            "logits (gradients through a sigmoid or softmax vanish where it saturates)"
        )
    elif low >= 0.0:
        sums = logits.detach().double().sum(dim=1)
        tol = _row_sum_tolerance(logits)
        if float(sums.max() - sums.min()) <= tol * float(sums.abs().max()) and not _distinct_rows(logits, tol):
            doubts.append(
                "the model's outputs are non-negative with one row sum, as scaled probabilities are, but there "
                "are not two different rows to tell; attacks need logits"
            )
    return doubts


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
