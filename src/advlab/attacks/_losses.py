"""Per-example attack objectives. Every one takes ``(logits, labels, targeted, true_labels=None)`` —
``labels`` are the true classes (untargeted) or the targets (targeted), ``true_labels`` the true classes of
a targeted run when known — and returns a ``(N,)`` tensor that the attack *ascends*."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "margin", "dlr")


def ce_objective(logits: Tensor, labels: Tensor, targeted: bool, true_labels: Tensor | None = None) -> Tensor:
    """Cross-entropy of the true class (untargeted, ascend) or minus that of the target (targeted)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


def _other_max(logits: Tensor, labels: Tensor) -> Tensor:
    """Largest logit among the classes other than ``labels``."""
    return logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)


def margin_objective(
    logits: Tensor, labels: Tensor, targeted: bool, true_labels: Tensor | None = None,
    confidence: float = math.inf,
) -> Tensor:
    """Carlini–Wagner margin: untargeted ``max_{j≠y} z_j - z_y``, targeted ``z_t - max_{j≠t} z_j``,
    capped at ``confidence`` (C&W's κ) so that ascent stops once the margin reaches it."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = _other_max(logits, labels)
    margin = own - other if targeted else other - own
    return margin.clamp(max=confidence) if confidence != math.inf else margin


def dlr_objective(logits: Tensor, labels: Tensor, targeted: bool, true_labels: Tensor | None = None) -> Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein (ICML 2020), shift- and scale-invariant.

    Untargeted: ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3)``. Targeted (``labels`` = targets ``t``):
    ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`` with ``y`` the true class from ``true_labels``; without
    them the best non-target class stands in for ``z_y``.
    """
    sorted_logits, _ = logits.sort(dim=1, descending=True)
    if not targeted:
        own = logits.gather(1, labels[:, None]).squeeze(1)
        denom = sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12
        return -(own - _other_max(logits, labels)) / denom
    z_t = logits.gather(1, labels[:, None]).squeeze(1)
    z_y = _other_max(logits, labels) if true_labels is None else logits.gather(1, true_labels[:, None]).squeeze(1)
    denom = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3]) + 1e-12
    return -(z_y - z_t) / denom


def objective(
    name: str, logits: Tensor, labels: Tensor, targeted: bool, true_labels: Tensor | None = None,
    confidence: float = math.inf,
) -> Tensor:
    """Dispatches to ``ce_objective``, ``margin_objective`` (with ``confidence``) or ``dlr_objective``."""
    if name == "ce":
        return ce_objective(logits, labels, targeted)
    if name == "margin":
        return margin_objective(logits, labels, targeted, confidence=confidence)
    if name == "dlr":
        check_dlr_classes(logits.shape[1], targeted)
        return dlr_objective(logits, labels, targeted, true_labels)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def check_dlr_classes(num_classes: int, targeted: bool) -> None:
    """The DLR loss reads the 3rd (targeted: 4th) largest logit."""
    if num_classes < (4 if targeted else 3):
        raise ValueError("the DLR loss needs at least 3 classes (4 when targeted); use loss='ce' or 'margin'")


def softmax_confidence(logits: Tensor) -> Tensor:
    """``(N,)`` probability of the predicted class."""
    return torch.softmax(logits, dim=1).amax(dim=1)
