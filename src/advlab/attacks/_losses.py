"""Per-example attack objectives. Every function returns a ``(N,)`` tensor that the attack *ascends*."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ce_objective(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Cross-entropy of the true class (untargeted, ascend) or minus that of the target (targeted)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


def _other_max(logits: Tensor, labels: Tensor) -> Tensor:
    """Largest logit among the classes other than ``labels``."""
    masked = logits.scatter(1, labels[:, None], float("-inf"))
    return masked.amax(dim=1)


def margin_objective(logits: Tensor, labels: Tensor, targeted: bool, kappa: float = float("inf")) -> Tensor:
    """Carlini–Wagner margin: untargeted ``max_{j≠y} z_j - z_y``, targeted ``z_t - max_{j≠t} z_j``,
    capped at ``kappa`` (confidence) so that ascent stops once the margin reaches it."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = _other_max(logits, labels)
    margin = own - other if targeted else other - own
    return margin.clamp(max=kappa) if kappa != float("inf") else margin


def dlr_objective(logits: Tensor, labels: Tensor, targeted: bool, target_classes: Tensor | None = None) -> Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein (ICML 2020), shift- and scale-invariant.

    Untargeted: ``-(z_y - max_{j≠y} z_j) / (z_π1 - z_π3)``. Targeted (``labels`` = true classes and
    ``target_classes`` given): ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``. With ``targeted=True`` and no
    ``target_classes``, ``labels`` are the targets and the true class is unknown, so the targeted form uses
    the best non-target class in place of ``z_y``.
    """
    sorted_logits, _ = logits.sort(dim=1, descending=True)
    if not targeted:
        own = logits.gather(1, labels[:, None]).squeeze(1)
        denom = sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12
        return -(own - _other_max(logits, labels)) / denom
    targets = labels if target_classes is None else target_classes
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    z_y = _other_max(logits, targets) if target_classes is None else logits.gather(1, labels[:, None]).squeeze(1)
    denom = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3]) + 1e-12
    return -(z_y - z_t) / denom


LOSSES = ("ce", "margin", "dlr")


def objective(name: str, logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """Dispatches to ``ce_objective``, ``margin_objective`` or ``dlr_objective`` by ``name``."""
    if name == "ce":
        return ce_objective(logits, labels, targeted)
    if name == "margin":
        return margin_objective(logits, labels, targeted)
    if name == "dlr":
        if (logits.shape[1] < 4 and targeted) or logits.shape[1] < 3:
            raise ValueError("the DLR loss needs at least 3 classes (4 when targeted); use loss='ce' or 'margin'")
        return dlr_objective(logits, labels, targeted)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def softmax_confidence(logits: Tensor) -> Tensor:
    """``(N,)`` probability of the predicted class."""
    return torch.softmax(logits, dim=1).amax(dim=1)
