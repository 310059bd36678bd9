"""The projected steepest-ascent loop shared by the iterative gradient attacks (BIM, ILLC, PGD, MI-FGSM,
the C&W L∞ attack)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from advlab.attacks._context import AttackContext, per_example_view
from advlab.attacks._losses import objective
from advlab.threat import LpBall, is_adversarial

StepFn = Callable[[Tensor, Tensor], Tensor]  # (grad, x_t) -> step to add to x_t


def iterate(
    ctx: AttackContext, x: Tensor, y: Tensor, start: Tensor, *, ball: LpBall, steps: int, step: StepFn,
    loss: str = "ce", confidence: float = math.inf, final_check: bool = False, true_labels: Tensor | None = None,
    early_stop: bool = False, check_start: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Projected steepest ascent: ``steps`` times ``x_t <- Π(x_t + step(∇ loss(x_t), x_t))``.

    ``Π`` projects onto ``x + ball`` and clips to the model's bounds. Each step's forward pass tells whether
    its iterate is adversarial; the last such iterate (after the start) is kept, so a later step cannot lose
    a success. With ``early_stop`` an example leaves the batch at its first adversarial iterate, which is
    kept: the same examples succeed, for less work (``step`` sees only the rows still running; a step with
    state per example offers ``keep(mask)`` to narrow it). With ``final_check`` one more forward pass
    evaluates the final iterate.

    ``loss`` is ascended (see :func:`~advlab.attacks.objective`; ``confidence`` caps the margin loss); a
    targeted DLR loss uses ``true_labels`` (the true classes) when given, in Croce & Hein's form. With
    ``check_start`` the start point's verdict counts too (for a random start).

    Returns ``(x_adv, success, value)``: ``success`` ``(N,)`` is known-adversarial (a lower bound without
    ``final_check``) and ``value`` the objective at the final iterate (``final_check``) or at the last
    evaluated one.
    """
    lo, hi = ctx.bounds
    view = per_example_view(x)
    box: tuple[Tensor, Tensor] | None = None
    if ball.norm == "linf" and not isinstance(ball.eps, Tensor):
        box = ((x - ball.eps).clamp_(min=lo), (x + ball.eps).clamp_(max=hi))  # ball ∩ bounds, one clamp per step
    # The rows still running (all of them unless early_stop) and their inputs, labels and true classes.
    idx = torch.arange(x.shape[0], device=x.device)
    xs, ys, ts = x, y, true_labels

    def obj(z: Tensor) -> Tensor:
        return objective(loss, z, ys, ctx.targeted, ts, confidence)

    x_t, best = start, start.clone() if early_stop else start
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for t in range(steps):
        # Budgets of one call share the first gradient when it is taken at the clean input.
        memo = f"iterate:{loss}" if t == 0 and x_t is x else None
        value_t, grad, logits = ctx.value_and_grad(x_t, obj, memo_key=memo)
        if t > 0 or check_start:
            adv = is_adversarial(logits, ys, ctx.targeted)
            if not early_stop:
                best = torch.where(adv.view(view), x_t, best)
                found |= adv
            elif bool(adv.any()):
                rows = idx[adv]
                best[rows], found[rows], value[rows] = x_t[adv], True, value_t[adv]
                keep = ~adv
                idx, x_t, grad, value_t, xs, ys = idx[keep], x_t[keep], grad[keep], value_t[keep], xs[keep], ys[keep]
                ts = None if ts is None else ts[keep]
                narrow = getattr(step, "keep", None)
                if narrow is not None:
                    narrow(keep)
                box = None if box is None else (box[0][keep], box[1][keep])
                if idx.numel() == 0:
                    return best, found, value
        if early_stop:
            value[idx] = value_t
        else:
            value = value_t
        x_t = x_t + step(grad, x_t)
        x_t = torch.clamp(x_t, box[0], box[1]) if box is not None else (xs + ball.project(x_t - xs)).clamp_(lo, hi)
    if early_stop:
        if final_check:
            logits = ctx.logits(x_t)
            adv = is_adversarial(logits, ys, ctx.targeted)
            found[idx] = adv
            value[idx] = obj(logits)
        best[idx] = x_t
        return best, found, value
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
