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
        already_at_target: ``(N,)`` bool, targeted runs: the model already assigns the clean input to its
            target, so the attack had nothing to do (all ``False`` for untargeted runs). Such an example's
            ``success`` is still ``True`` where ``x_adv`` is classified as the target (``success`` means "at
            the goal after the attack"), but :attr:`success_rate` does not count it;
            :attr:`n_already_at_target` counts them.
        n_forward / n_backward: model evaluations / input-gradient computations, counted per example.
        n_queries: forward evaluations made as queries (equals ``n_forward`` for white-box attacks; for
            black-box attacks the queries the attacker made, ``n_forward`` adding the engine's unmetered
            re-checks).
        seconds: wall time of the whole call.
        config: the attack's full configuration (hyper-parameters, norm, budgets, targeted, batch size).
        queries: black-box attacks: ``(B, N)`` int64 queries made for each example, one row per budget (a
            minimum-norm attack runs once: every row holds that run's counts); ``None`` for white-box attacks.
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
    already_at_target: Tensor
    n_forward: int
    n_backward: int
    n_queries: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    queries: Tensor | None = None

    @property
    def robust_accuracy(self) -> Tensor:
        """``(B,)`` fraction of examples still classified correctly (untargeted runs only)."""
        if self.targeted:
            raise ValueError("robust accuracy is defined for untargeted runs; use success_rate for targeted ones")
        return (self.clean_correct[None, :] & ~self.success).float().mean(dim=1)

    @property
    def success_rate(self) -> Tensor:
        """``(B,)`` fraction of the ``N`` examples that the attack made adversarial.

        Untargeted: misclassified after the attack (clean misclassifications included; :attr:`robust_accuracy`
        is the measure of an untargeted run). Targeted: classified as the target after the attack but not
        before it; examples :attr:`already_at_target` are not attack successes and do not count."""
        success = self.success & ~self.already_at_target[None, :] if self.targeted else self.success
        return success.float().mean(dim=1)

    @property
    def n_already_at_target(self) -> int:
        """Number of examples already at their target before the attack (targeted runs; else 0)."""
        return int(self.already_at_target.sum())

    def summary(self) -> list[dict[str, float]]:
        """One JSON-ready dict per budget: eps, robust_accuracy (untargeted), success_rate (see
        :attr:`success_rate`), median/mean distance of the successful examples (NaN when none; targeted:
        examples already at their target excluded); black-box attacks add the mean and median queries per
        example, of all examples (``mean_queries``, ``median_queries``) and of the successful ones
        (``mean_queries_success``, ``median_queries_success``)."""
        rows = []
        rates = self.success_rate
        for i, e in enumerate(self.eps):
            ok = self.success[i] & ~self.already_at_target if self.targeted else self.success[i]
            dist = self.distances[i][ok].double()
            row: dict[str, float] = {"eps": e, "success_rate": float(rates[i])}
            if not self.targeted:
                row["robust_accuracy"] = float(self.robust_accuracy[i])
            row["median_distance"] = float(dist.median()) if dist.numel() else math.nan
            row["mean_distance"] = float(dist.mean()) if dist.numel() else math.nan
            if self.queries is not None:  # black-box: queries per example, of all and of the successful ones
                q = self.queries[i].double()
                row["mean_queries"], row["median_queries"] = float(q.mean()), float(q.median())
                row["mean_queries_success"] = float(q[ok].mean()) if bool(ok.any()) else math.nan
                row["median_queries_success"] = float(q[ok].median()) if bool(ok.any()) else math.nan
            rows.append(row)
        return rows
