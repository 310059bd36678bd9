"""Auto-PGD (APGD): projected gradient ascent with momentum and a budget-aware, parameter-free step size.

Reference: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_choice, check_float, check_int
from advlab.attacks._context import AttackContext, Kernel, per_example_view, replicate
from advlab.attacks._engine import run_attack
from advlab.attacks._losses import LOSSES, check_dlr_classes, objective
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import LpBall, is_adversarial


@dataclass(frozen=True)
class APGDConfig:
    """Hyper-parameters of APGD: iterations, loss, random restarts, momentum, the halving threshold and whether
    each example stops at its first adversarial iterate."""

    steps: int = 100
    loss: str = "ce"
    restarts: int = 1
    momentum: float = 0.75
    rho: float = 0.75
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_choice("loss", self.loss, LOSSES)
        check_int("restarts", self.restarts)
        for name in ("momentum", "rho"):
            check_float(name, getattr(self, name), inclusive=False, maximum=1.0)
        check_bool("early_stop", self.early_stop)


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size.

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    Example:
        >>> checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps - 1e-9) for q in p[1:]} - {0})


def _apgd_kernel(config: APGDConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        n, r = x.shape[0], config.restarts
        ball = LpBall(norm, eps)
        shape = per_example_view(x)
        # The rows still running (restart-major, all of them unless early_stop) and their clean inputs, labels
        # and true classes; ``rows`` maps them to the ``n * r`` rows of the replicated chunk.
        xr, yr = replicate(x, r), y.repeat(r)
        truth_r = None if ctx.true_labels is None else ctx.true_labels.repeat(r)
        rows = torch.arange(n * r, device=x.device)
        if config.loss == "dlr":
            check_dlr_classes(ctx.num_classes, ctx.targeted)

        def obj(z: Tensor) -> Tensor:
            return objective(config.loss, z, yr, ctx.targeted, truth_r)

        def project(p: Tensor) -> Tensor:
            return ctx.clip(xr + ball.project(p - xr))

        def step_dir(g: Tensor) -> Tensor:
            return ball.steepest_step(g, 1.0)

        # one draw for every restart of every example, per example (the same whatever the batch size)
        cur = project(xr + ctx.random_init(ball, r).rows())
        eta = torch.full((n * r,), 2.0 * eps, dtype=x.dtype, device=x.device)
        f, g, logits = ctx.value_and_grad(cur, obj)
        f_max, x_max, g_max = f.clone(), cur.clone(), g.clone()
        found = is_adversarial(logits, yr, ctx.targeted)
        found_at = torch.where(found, 0, config.steps + 1)  # the iteration of each row's first adversarial point
        x_found = cur.clone()
        prev, f_prev = cur, f
        count = torch.zeros_like(f)
        eta_ck, f_max_ck, last = eta.clone(), f_max.clone(), 0
        marks = set(checkpoints(config.steps))
        # early_stop: the verdicts of the rows that left, kept at full size (an example leaves with all its
        # restarts at the first iteration where one of them is adversarial)
        out_found, out_at, out_x = found.clone(), found_at.clone(), x_found.clone()
        k = 0
        while k < config.steps:
            if config.early_stop and bool(found.any()):
                done = torch.zeros(n, dtype=torch.bool, device=x.device)
                done[rows[found] % n] = True
                keep = ~done[rows % n]
                gone = rows[~keep]
                out_found[gone], out_at[gone], out_x[gone] = found[~keep], found_at[~keep], x_found[~keep]
                rows, xr, yr = rows[keep], xr[keep], yr[keep]
                truth_r = None if truth_r is None else truth_r[keep]
                cur, prev, g, x_max, g_max, x_found = (t[keep] for t in (cur, prev, g, x_max, g_max, x_found))
                eta, f_prev, f_max, count, eta_ck, f_max_ck, found, found_at = (
                    t[keep] for t in (eta, f_prev, f_max, count, eta_ck, f_max_ck, found, found_at))
                if rows.numel() == 0:
                    break
            k += 1
            a = config.momentum if k > 1 else 1.0
            z = project(cur + eta.reshape(shape) * step_dir(g))
            prev, cur = cur, project(cur + a * (z - cur) + (1 - a) * (cur - prev))
            if k == config.steps:  # the last update's point is evaluated, not differentiated
                if r == 1:  # ... by the engine's re-check: return it where no iterate was adversarial
                    final = torch.where(found.reshape(shape), x_found, cur)
                    if rows.numel() == n:
                        return final
                    out_x[rows] = final
                    return out_x
                logits = ctx.logits(cur)
                f = obj(logits)
            else:
                f, g, logits = ctx.value_and_grad(cur, obj)
            adv = is_adversarial(logits, yr, ctx.targeted)
            x_found = torch.where((adv & ~found).reshape(shape), cur, x_found)
            found_at = torch.where(adv & ~found, k, found_at)
            found |= adv
            count += f > f_prev
            f_prev = f
            better = f > f_max
            f_max = torch.where(better, f, f_max)
            x_max = torch.where(better.reshape(shape), cur, x_max)
            g_max = torch.where(better.reshape(shape), g, g_max)
            if k in marks and k < config.steps:
                few_gains = count < config.rho * (k - last)
                stuck = (eta_ck == eta) & (f_max_ck == f_max)
                halve = few_gains | stuck
                eta = torch.where(halve, eta / 2, eta)
                hm = halve.reshape(shape)
                cur, prev, g = torch.where(hm, x_max, cur), torch.where(hm, x_max, prev), torch.where(hm, g_max, g)
                f_prev = torch.where(halve, f_max, f_prev)
                count.zero_()
                eta_ck, f_max_ck, last = eta.clone(), f_max.clone(), k
            if not config.early_stop and k % 10 == 0 and bool(found.view(r, n).any(dim=0).all()):
                break  # every example already has an adversarial point in some restart
        if rows.numel() < n * r:  # early_stop: the rows still running join those that left
            f_all = torch.full((n * r,), -torch.inf, dtype=f_max.dtype, device=x.device)
            x_all = out_x.clone()
            f_all[rows], x_all[rows] = f_max, x_max
            out_found[rows], out_at[rows], out_x[rows] = found, found_at, x_found
            found, found_at, x_found, f_max, x_max = out_found, out_at, out_x, f_all, x_all
        # Per example: the adversarial iterate found first (earliest iteration, then lowest restart), else the
        # highest-loss point over restarts. "First found" does not depend on when the loop stopped, so an
        # example's result does not depend on the other examples of its chunk (the batch size).
        best = torch.where(found.reshape(shape), x_found, x_max).view(r, n, *x.shape[1:])
        first = found_at.view(r, n).argmin(dim=0)
        pick = torch.where(found.view(r, n).any(dim=0), first, f_max.view(r, n).argmax(dim=0))
        return best[pick, torch.arange(n, device=x.device)]

    return kernel


@register_attack("apgd", norms=("linf", "l2"), config=APGDConfig, kernel=_apgd_kernel)
def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    momentum: float = 0.75,
    rho: float = 0.75,
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts to the budget.

    From a random start in the ball, ``z = Π(x_k + η s(∇f(x_k)))`` and
    ``x_{k+1} = Π(x_k + α (z - x_k) + (1 - α)(x_k - x_{k-1}))`` (no momentum on the first step), with ``s``
    the steepest-ascent direction (sign for L∞, normalised gradient for L2) and ``Π`` the projection onto the
    ball and the bounds. ``η`` starts at ``2 eps`` and is halved at the checkpoints ``w_j = ceil(p_j steps)``
    (see :func:`checkpoints`) for examples where fewer than ``ρ`` of the steps since the last checkpoint
    raised the loss, or where neither ``η`` nor the best loss changed since it; such an example restarts from
    its best point. Restarts are batched (the chunk is replicated ``restarts`` times); each example keeps the
    adversarial iterate found first (earliest iteration, then lowest restart), else its highest-loss point over
    the restarts (with one restart: its final iterate, which the engine's re-check evaluates, so no extra
    forward pass is spent on it). The run stops once every example is broken (checked every 10 steps). With
    ``early_stop`` each example leaves the batch at the first iteration where one of its restarts is
    adversarial, keeping that iterate: the same examples succeed with the same points, and an example broken
    early costs no further passes (what a worst-case cascade wants: one adversarial point, not the strongest).
    Random starts are drawn per example: the same seed gives the same result whatever ``batch_size``.

    Losses: ``ce`` (cross-entropy), ``dlr`` (difference of logits ratio) or ``margin``. Targeted DLR
    (``targeted=True``, ``y`` = targets) is ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`` with the true class
    from ``true_labels``; without them the best non-target class stands in for it (see
    :func:`~advlab.attacks.losses.dlr_objective`). The paper's APGD-T (targeted DLR over the top-k classes)
    is this attack run once per target.

    Threat model: L_p ball of radius ``eps`` (``norm`` in linf, l2) intersected with the model's bounds.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels (targets
            when ``targeted``). eps: budget or list of budgets (raw input units). norm: ``linf`` (default) or
            ``l2``. steps: iterations per restart (default 100), each a gradient evaluation and an update; the
            last update's point costs one more forward pass when there are several restarts. loss: ``ce``
            (default), ``dlr`` or ``margin``. restarts: random restarts, batched (default 1). momentum: the
            weight ``α`` of the new step against the previous one (default 0.75; 1 is no momentum).
            rho: fraction of improving steps below which the step size halves (default 0.75).
            early_stop: stop each example at its first adversarial iterate (default ``False``).
            generator: random starts, drawn per example; same seed, same result whatever the batch size.
            batch_size: chunk size (memory grows with ``restarts * batch_size``). true_labels: true classes
            of a targeted run (used by targeted DLR).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> g = torch.Generator().manual_seed(0)
        >>> r = advlab.attacks.apgd(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.1, steps=10,
        ...                         loss="dlr", generator=g)
        >>> bool((r.distances <= 0.1 + 1e-6).all())
        True
    """
    config = APGDConfig(steps=steps, loss=loss, restarts=restarts, momentum=momentum, rho=rho,
                        early_stop=early_stop)
    return run_attack(
        "apgd", model, x, y, eps=eps, norm=norm, kernel=_apgd_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
