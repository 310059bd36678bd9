"""What every attack returns: :class:`AttackResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class AttackResult:
    """Adversarial inputs and their verdicts for every budget of one attack call.

    Attributes:
        attack: registered name of the attack.
        eps: the budgets, in raw input units.
        norm: the threat model's norm (``linf``, ``l2``, ``l1`` or ``l0``).
        targeted: whether ``labels`` are target classes.
        labels: ``(N,)`` true classes (untargeted) or targets (targeted).
        x_adv: ``(B, N, ...)`` adversarial inputs, one slice per budget, inside the ball and the bounds.
        success: ``(B, N)`` bool, re-checked by the engine on ``x_adv``.
        adv_pred: ``(B, N)`` the model's predictions on ``x_adv`` (from that re-check).
        distances: ``(B, N)`` perturbation sizes ``||x_adv - x||_p`` in the threat model's norm.
        clean_correct: ``(N,)`` bool. Untargeted: the clean prediction equals the true class. Targeted: it
            equals ``true_labels`` when those were given, else the clean input is not already the target.
        clean_pred: ``(N,)`` the model's predictions on the clean inputs.
        n_forward / n_backward: model evaluations / input-gradient computations, counted per example.
        n_queries: forward evaluations made as queries (equals ``n_forward`` for white-box attacks).
        seconds: wall time of the whole call.
        config: the attack's full configuration (hyper-parameters, norm, budgets, targeted, batch size).
    """

    attack: str
    eps: tuple[float, ...]
    norm: str
    targeted: bool
    labels: Tensor
    x_adv: Tensor
    success: Tensor
    adv_pred: Tensor
    distances: Tensor
    clean_correct: Tensor
    clean_pred: Tensor
    n_forward: int
    n_backward: int
    n_queries: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> Tensor:
        """``(B,)`` fraction of examples still classified correctly (untargeted runs only)."""
        if self.targeted:
            raise ValueError("robust accuracy is defined for untargeted runs; use success_rate for targeted ones")
        return (self.clean_correct[None, :] & ~self.success).float().mean(dim=1)

    @property
    def success_rate(self) -> Tensor:
        """``(B,)`` fraction of examples that are adversarial (hit the target when targeted)."""
        return self.success.float().mean(dim=1)

    def summary(self) -> list[dict[str, float]]:
        """One JSON-ready dict per budget: eps, robust_accuracy (untargeted), success_rate, median/mean
        distance of the successful examples (NaN when none succeeded)."""
        rows = []
        for i, e in enumerate(self.eps):
            ok = self.success[i]
            dist = self.distances[i][ok].double()
            row: dict[str, float] = {"eps": e, "success_rate": float(self.success_rate[i])}
            if not self.targeted:
                row["robust_accuracy"] = float(self.robust_accuracy[i])
            row["median_distance"] = float(dist.median()) if dist.numel() else math.nan
            row["mean_distance"] = float(dist.mean()) if dist.numel() else math.nan
            rows.append(row)
        return rows
