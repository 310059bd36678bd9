"""The projected steepest-ascent loop shared by the iterative gradient attacks (BIM, ILLC, PGD, MI-FGSM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advlab.attacks.base import AttackContext
from advlab.attacks.losses import dlr_objective, objective
from advlab.threat import LpBall, is_adversarial

StepFn = Callable[[Tensor, Tensor], Tensor]  # (grad, x_t) -> step to add to x_t


def iterate(
    ctx: AttackContext, x: Tensor, y: Tensor, start: Tensor, *, ball: LpBall, steps: int, step: StepFn,
    loss: str = "ce", final_check: bool = False, true_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Projected steepest ascent: ``steps`` times ``x_t <- Π(x_t + step(∇ loss(x_t), x_t))``.

    ``Π`` projects onto ``x + ball`` and clips to the model's bounds. Each step's forward pass tells whether
    its iterate is adversarial; the last such iterate (after the start) is kept, so a later step cannot lose
    a success. With ``final_check`` one more forward pass evaluates the final iterate.

    ``loss`` is ascended (see :func:`~advlab.attacks.losses.objective`); a targeted DLR loss uses
    ``true_labels`` (the true classes) when given, in Croce & Hein's form.

    Returns ``(x_adv, success, value)``: ``success`` ``(N,)`` is known-adversarial (a lower bound without
    ``final_check``) and ``value`` the objective at the final iterate (``final_check``) or at the last
    evaluated one.
    """
    lo, hi = ctx.bounds
    view = (-1, *([1] * (x.ndim - 1)))
    box: tuple[Tensor, Tensor] | None = None
    if ball.norm == "linf" and not isinstance(ball.eps, Tensor):
        box = ((x - ball.eps).clamp_(min=lo), (x + ball.eps).clamp_(max=hi))  # ball ∩ bounds, one clamp per step

    def obj(z: Tensor) -> Tensor:
        if loss == "dlr" and ctx.targeted and true_labels is not None and z.shape[1] >= 4:
            return dlr_objective(z, true_labels, True, target_classes=y)
        return objective(loss, z, y, ctx.targeted)

    x_t, best = start, start
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for t in range(steps):
        # Budgets of one call share the first gradient when it is taken at the clean input.
        memo = f"iterate:{loss}" if t == 0 and x_t is x else None
        value, grad, logits = ctx.value_and_grad(x_t, obj, memo_key=memo)
        if t > 0:
            adv = is_adversarial(logits, y, ctx.targeted)
            best = torch.where(adv.view(view), x_t, best)
            found |= adv
        x_t = x_t + step(grad, x_t)
        x_t = torch.clamp(x_t, box[0], box[1]) if box is not None else (x + ball.project(x_t - x)).clamp_(lo, hi)
    if final_check:
        logits = ctx.logits(x_t)
        adv = is_adversarial(logits, y, ctx.targeted)
        return torch.where((found & ~adv).view(view), best, x_t), found | adv, obj(logits)
    return torch.where(found.view(view), best, x_t), found, value


def steepest(ball: LpBall, step_size: float, bounds: tuple[float, float], l1_sparsity: float = 0.95) -> StepFn:
    """The steepest-ascent step of L_p length ``step_size`` (see :meth:`LpBall.steepest_step`); L∞ is
    computed in place on the fresh gradient."""
    if ball.norm == "linf":
        return lambda grad, _x: grad.sign_().mul_(step_size)
    return lambda grad, x_t: ball.steepest_step(grad, step_size, x=x_t, bounds=bounds, l1_sparsity=l1_sparsity)
