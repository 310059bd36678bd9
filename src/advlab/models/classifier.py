"""The ``Classifier`` wrapper: raw inputs within ``bounds`` in, logits out, normalisation inside."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

# The one tolerance on the bounds (float round-off of clipping), re-exported here for older imports.
from advlab._validate import BOUNDS_TOLERANCE as BOUNDS_TOLERANCE


class Classifier(nn.Module):
    """Wraps a network so that it takes raw inputs within ``bounds`` and returns logits.

    Normalisation ``(x - mean) / std`` (per channel) happens inside, so attacks and budgets work in raw
    input units. Inputs that are NaN/inf or outside ``bounds`` raise ``ValueError`` while input checks are
    on (the default; attacks switch them off inside their loops with :func:`unchecked_inputs` after
    validating once at the boundary).

    Args:
        net: module mapping normalised inputs ``(N, C, H, W)`` to logits ``(N, K)``.
        bounds: ``(low, high)`` of valid raw inputs, default ``(0.0, 1.0)``.
        mean: per-channel mean subtracted inside, or ``None``.
        std: per-channel standard deviation divided inside, or ``None``.

    Example:
        >>> import torch
        >>> clf = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)))
        >>> clf(torch.rand(2, 1, 2, 2)).shape
        torch.Size([2, 3])
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(
        self,
        net: nn.Module,
        bounds: tuple[float, float] = (0.0, 1.0),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
        self.net = net
        self.bounds = (low, high)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for normalisation, or neither")
        if mean is not None and std is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
            if mean_t.numel() != std_t.numel():
                raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
            if not bool((std_t > 0).all()):
                raise ValueError(f"std must be positive, got {list(std)}")
            self.register_buffer("mean", mean_t)
            self.register_buffer("std", std_t)
        else:
            self.mean = None
            self.std = None
        self.check_inputs = True
        # Set by ``create_model``/``load_checkpoint`` so checkpoints can record how to rebuild the net.
        self.model_name: str | None = None
        self.model_config: dict[str, Any] = {}

    def normalization(self) -> tuple[list[float] | None, list[float] | None]:
        """The per-channel ``(mean, std)`` as lists, or ``(None, None)``."""
        if self.mean is None or self.std is None:
            return None, None
        return self.mean.flatten().tolist(), self.std.flatten().tolist()

    def validate(self, x: Tensor) -> None:
        """Raises ``ValueError``/``TypeError`` if ``x`` is not a finite float batch within ``bounds``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        if x.numel() == 0:
            return
        low, high = torch.aminmax(x.detach())  # one pass for both extremes; NaN propagates into them
        lo, hi = float(low), float(high)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("inputs contain NaN or inf; every value must be finite")
        if lo < self.bounds[0] - BOUNDS_TOLERANCE or hi > self.bounds[1] + BOUNDS_TOLERANCE:
            raise ValueError(
                f"inputs range over [{lo:.4g}, {hi:.4g}] but this Classifier expects raw inputs within "
                f"bounds {self.bounds}; pass un-normalised data (normalisation happens inside) or build "
                f"the Classifier with matching bounds"
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.check_inputs:
            self.validate(x)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        out: Tensor = self.net(x)
        return out


@contextmanager
def unchecked_inputs(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager that switches off a ``Classifier``'s per-call input checks (no-op otherwise).

    Use only after the inputs were validated once; the previous setting is restored on exit.
    """
    if isinstance(model, Classifier):
        before = model.check_inputs
        model.check_inputs = False
        try:
            yield model
        finally:
            model.check_inputs = before
    else:
        yield model
