"""Momentum iterative FGSM (MI-FGSM).

Reference: Dong, Liao, Pang, Su, Zhu, Hu & Li, "Boosting Adversarial Attacks with Momentum", CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_choice, check_float, check_int, check_optional
from advlab.attacks._context import AttackContext, Kernel, per_example_view
from advlab.attacks._engine import run_attack
from advlab.attacks._iterative import StepFn, iterate
from advlab.attacks._losses import LOSSES
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import LpBall, lp_norm


@dataclass(frozen=True)
class MIFGSMConfig:
    """Hyper-parameters of MI-FGSM. ``step_size=None`` means ``eps / steps``."""

    steps: int = 10
    step_size: float | None = None
    decay: float = 1.0
    loss: str = "ce"
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_optional("step_size", self.step_size, check_float, inclusive=False)
        check_float("decay", self.decay)
        check_choice("loss", self.loss, LOSSES)
        check_bool("early_stop", self.early_stop)


class _Momentum:
    """The momentum step: state ``g`` per example, narrowed with the batch when examples stop early."""

    def __init__(self, like: Tensor, step_size: float, decay: float, norm: str) -> None:
        self.g = torch.zeros_like(like)
        self.view = per_example_view(like)
        self.step_size, self.decay, self.norm = step_size, decay, norm

    def __call__(self, grad: Tensor, _x: Tensor) -> Tensor:
        self.g.mul_(self.decay).add_(grad / lp_norm(grad, "l1").clamp(min=1e-12).view(self.view))
        if self.norm == "linf":
            return self.g.sign().mul_(self.step_size)
        return self.g * (self.step_size / lp_norm(self.g, "l2").clamp(min=1e-12).view(self.view))

    def keep(self, rows: Tensor) -> None:
        """Keeps the state of ``rows`` (a boolean mask over the running examples) only."""
        self.g = self.g[rows]


def momentum_step(like: Tensor, step_size: float, decay: float, norm: str) -> StepFn:
    """``g <- decay * g + grad / ||grad||_1`` (per example), then a step of L_p length ``step_size`` along
    ``g``: ``sign(g)`` for L∞, ``g / ||g||_2`` for L2. ``g`` starts at zero and lives in the step object,
    which :func:`~advlab.attacks.iterative.iterate` narrows when examples stop early."""
    return _Momentum(like, step_size, decay, norm)


def _mifgsm_kernel(config: MIFGSMConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        alpha = config.step_size if config.step_size is not None else eps / config.steps
        step = momentum_step(x, alpha, config.decay, norm)
        ball = LpBall(norm, eps)
        return iterate(ctx, x, y, x, ball=ball, steps=config.steps, step=step, loss=config.loss,
                       true_labels=ctx.true_labels, early_stop=config.early_stop)[0]

    return kernel


@register_attack("mifgsm", norms=("linf", "l2"), config=MIFGSMConfig, kernel=_mifgsm_kernel)
def mifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    decay: float = 1.0,
    loss: str = "ce",
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Momentum iterative FGSM: sign steps along an accumulated, L1-normalised gradient (Dong et al. 2018).

    Threat model: L∞ ball of radius ``eps`` (or L2, with normalised steps) intersected with the model's
    bounds. ``g_{t+1} = μ g_t + ∇J(x_t) / ||∇J(x_t)||_1``, ``x_{t+1} = Clip_{x,eps}(x_t + α sign(g_{t+1}))``
    from ``x_0 = x``. The momentum stabilises the direction, which mainly helps transfer to other models.
    Targeted (``y`` = targets) descends the loss of the target. The last adversarial iterate is kept.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels
            (targets when ``targeted``). eps: budget or list of budgets, raw input units. norm: ``linf``
            (default) or ``l2``. steps: iterations (default 10). step_size: ``α``; ``None`` is ``eps / steps``.
            decay: momentum ``μ`` (default 1.0; 0 gives BIM). loss: ``ce`` (default), ``margin`` or ``dlr``.
            early_stop: stop each example at its first adversarial iterate and return it (default ``False``;
            see :func:`~advlab.attacks.pgd`). generator: unused (deterministic). batch_size: chunk size.
            true_labels: true classes of a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.mifgsm(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.1)
        >>> bool((r.distances <= 0.1 + 1e-6).all())
        True
    """
    config = MIFGSMConfig(steps=steps, step_size=step_size, decay=decay, loss=loss, early_stop=early_stop)
    return run_attack(
        "mifgsm", model, x, y, eps=eps, norm=norm, kernel=_mifgsm_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )
