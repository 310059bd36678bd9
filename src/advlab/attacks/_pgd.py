"""Projected gradient descent (PGD) with random start and restarts, for L∞, L2 and L1 balls.

References: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018; the sparse L1 step of Tramèr & Boneh, "Adversarial Training and Robustness
for Multiple Perturbations", NeurIPS 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_choice, check_float, check_int, check_optional
from advlab.attacks._context import AttackContext, Kernel, per_example_view, replicate
from advlab.attacks._engine import run_attack
from advlab.attacks._iterative import StepFn, iterate, steepest
from advlab.attacks._losses import LOSSES
from advlab.attacks._random import RandomDraw
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import LpBall

# Restarts are replicated into one batch of at most this many examples per device type (or run one at a time
# for larger chunks, rerunning only the examples not yet broken). A CPU is saturated by a few hundred examples
# and slows down beyond them (the activations leave the cache); a GPU gains from large batches. Lower
# ``batch_size`` to bound memory.
REPLICA_LIMIT: dict[str, int] = {"cpu": 256, "cuda": 2048}


@dataclass(frozen=True)
class PGDConfig:
    """Hyper-parameters of PGD. ``step_size=None`` means ``2.5 * eps / steps``."""

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    l1_sparsity: float = 0.95
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_optional("step_size", self.step_size, check_float, inclusive=False)
        check_int("restarts", self.restarts)
        check_bool("random_start", self.random_start)
        check_choice("loss", self.loss, LOSSES)
        check_float("l1_sparsity", self.l1_sparsity, maximum=1.0, max_inclusive=False)
        check_bool("early_stop", self.early_stop)
        if self.restarts > 1 and not self.random_start:
            raise ValueError("restarts > 1 repeat the same deterministic run without a random start; "
                             "set random_start=True or restarts=1")


def _pgd_kernel(config: PGDConfig, norm: str) -> Kernel:
    def run(
        ctx: AttackContext, x: Tensor, y: Tensor, true: Tensor | None, ball: LpBall, step: StepFn,
        deltas: list[RandomDraw], idx: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One restart per draw in ``deltas`` for the chunk's examples ``idx`` (all when ``None``), in one
        batch (``len(deltas) * N`` rows, restart-major)."""
        replicas = max(1, len(deltas))
        xr = replicate(x, replicas)
        start = xr
        if deltas:  # each restart's start is drawn per example: the same whatever the batch size
            start = ctx.clip(xr + torch.cat([d.rows(idx) for d in deltas]))
        return iterate(ctx, xr, y.repeat(replicas), start, ball=ball, steps=config.steps, step=step,
                       loss=config.loss, final_check=config.restarts > 1, early_stop=config.early_stop,
                       true_labels=None if true is None else true.repeat(replicas))

    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        ball = LpBall(norm, eps)
        alpha = config.step_size if config.step_size is not None else 2.5 * eps / config.steps
        step = steepest(ball, alpha, ctx.bounds, config.l1_sparsity)
        # Every restart's random start is requested up front, whichever restarts run (rule: draws per example).
        starts = [ctx.random_init(ball, radial=True) for _ in range(config.restarts)] if config.random_start else []
        if config.restarts == 1:
            return run(ctx, x, y, ctx.true_labels, ball, step, starts, None)[0]
        n, r = x.shape[0], config.restarts
        view = per_example_view(x)
        group = max(1, min(r, REPLICA_LIMIT.get(x.device.type, 1024) // n))
        out, done = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        best_value = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        for first in range(0, r, group):
            k = min(group, r - first)
            idx = (~done).nonzero().squeeze(1)  # restarts after the first group only rerun the failures
            m = idx.numel()
            if m == 0:
                break
            true = None if ctx.true_labels is None else ctx.true_labels[idx]
            x_adv, success, value = run(ctx, x[idx], y[idx], true, ball, step, starts[first : first + k], idx)
            x_adv, success, value = x_adv.view(k, m, *x.shape[1:]), success.view(k, m), value.view(k, m)
            # per example: the first successful restart, else the one with the highest final loss (the
            # first of equals): the same choice whatever the grouping of restarts
            pick = torch.where(success.any(0), success.to(torch.uint8).argmax(0), value.argmax(0))
            cols = torch.arange(m, device=x.device)
            hit, val = success[pick, cols], value[pick, cols]
            better = hit | (val > best_value[idx])
            out[idx] = torch.where(better.view(view), x_adv[pick, cols], out[idx])
            best_value[idx] = torch.where(better, val, best_value[idx])
            done[idx] = hit
        return out

    return kernel


@register_attack("pgd", norms=("linf", "l2", "l1"), config=PGDConfig, kernel=_pgd_kernel)
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    l1_sparsity: float = 0.95,
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Projected gradient descent on the loss from a random start in the ball (Madry et al. 2018).

    Threat model: L_p ball of radius ``eps`` (``norm`` in linf/l2/l1) intersected with the model's bounds.
    ``x_0 = x + δ_0`` (L∞: uniform in the ball; L2/L1: a uniform direction at a radius uniform in
    ``[0, eps]``, closer to ``x`` than a point uniform in the ball, which lies almost on its surface: on
    MNIST at L2 ε = 1.5 robust accuracy came out 1.9 points lower); ``x_{t+1} = Π(x_t + α s_t)`` with ``s_t``
    the steepest-ascent direction of unit L_p length (``sign`` for L∞, normalised gradient for L2, the sparse
    step of Tramèr & Boneh 2019 for L1) and ``Π`` the projection onto the ball and the bounds. Targeted
    (``y`` = targets) descends the loss of the target. The last adversarial iterate is kept; with
    ``restarts > 1`` each example keeps its first successful restart, else the restart with the highest final
    loss, and restarts after the first batch
    rerun only the examples not yet broken.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels
            (targets when ``targeted``). eps: budget or list of budgets, raw input units. norm: ``linf``
            (default), ``l2`` or ``l1``. steps: iterations (default 40, Madry et al.'s MNIST setting).
            step_size: ``α``; ``None`` is ``2.5 * eps / steps``. restarts: random restarts (default 1), batched
            by replicating the chunk up to ``REPLICA_LIMIT[device type]`` examples per pass (CPU 256,
            CUDA 2048). random_start: start at a random point of the ball (default ``True``; see above).
            loss: ``ce`` (default), ``margin`` (C&W) or ``dlr``.
            l1_sparsity: for L1, the quantile of ``|grad|`` below which coordinates do not move (default
            0.95). early_stop: an example stops at its first adversarial iterate, which is returned (default
            ``False``: all ``steps``, the last adversarial iterate returned). The same examples succeed, so
            robust accuracy is unchanged, for fewer passes the more examples break early: what an evaluation
            wants; keep the default for the strongest (highest-loss) examples, e.g. for training.
            generator: random starts, drawn per example; same seed, same result whatever the batch size.
            batch_size: chunk size. true_labels: true classes of a targeted run (checked to differ from the
            targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> g = torch.Generator().manual_seed(0)
        >>> r = advlab.attacks.pgd(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=1.0, norm="l2",
        ...                        steps=10, generator=g)
        >>> bool((r.distances <= 1.0 + 1e-5).all())
        True
    """
    config = PGDConfig(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start,
                       loss=loss, l1_sparsity=l1_sparsity, early_stop=early_stop)
    return run_attack(
        "pgd", model, x, y, eps=eps, norm=norm, kernel=_pgd_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
        clean_first=not random_start,
    )
