"""Checks of user-supplied values, shared by every package (the bottom floor: imports nothing of advlab).

One rule for the exception class: a value of the wrong *type* (a string for a number, a bool for an
integer, a float for an integer) raises ``TypeError``; a value of the right type but outside its range
raises ``ValueError``. Every message names the parameter, what was given and what is expected.

Example:
    >>> check_int("steps", 10)
    10
    >>> check_float("lr", 0, minimum=0, inclusive=False)
    Traceback (most recent call last):
    ...
    ValueError: lr must be > 0, got 0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Inputs may overshoot their bounds by this much (float round-off of clipping) before they are refused.
BOUNDS_TOLERANCE = 1e-5


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{upper}, got {value}")
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a finite ``float`` within the limits (``inclusive`` applies to ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (value == minimum and not inclusive)):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {minimum:g}, got {value:g}")
    if maximum is not None and (value > maximum or (value == maximum and not max_inclusive)):
        raise ValueError(f"{name} must be {'<=' if max_inclusive else '<'} {maximum:g}, got {value:g}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a ``bool`` (not merely truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_optional(name: str, value: object, check: Any, **kwargs: Any) -> Any:
    """``None``, or ``check(name, value, **kwargs)``."""
    return None if value is None else check(name, value, **kwargs)


def check_batch(x: object, bounds: tuple[float, float], name: str = "x") -> Tensor:
    """``x`` if it is a non-empty, finite, floating-point batch ``(N, ...)`` within ``bounds``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; convert with x.float() "
                        f"and scale to the bounds")
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch of shape (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one example")
    low, high = torch.aminmax(x.detach())
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf; every input value must be finite")
    if lo < bounds[0] - BOUNDS_TOLERANCE or hi > bounds[1] + BOUNDS_TOLERANCE:
        raise ValueError(
            f"{name} ranges over [{lo:.4g}, {hi:.4g}] but the model's bounds are {bounds}; pass raw "
            f"(un-normalised) inputs within the bounds"
        )
    return x


def check_labels(y: object, n: int, name: str = "y", device: torch.device | None = None) -> Tensor:
    """``y`` as an int64 ``(n,)`` tensor of class indices (range checked later against the model)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match x, got {tuple(y.shape)}")
    return y.to(device=device, dtype=torch.long)
