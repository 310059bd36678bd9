"""RAND+FGSM (R+FGSM): a random sign step, then an FGSM step with the rest of the budget.

Reference: Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, "Ensemble Adversarial Training: Attacks
and Defenses", ICLR 2018 (arXiv:1705.07204).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab.attacks.base import (
    AttackContext,
    AttackResult,
    Kernel,
    check_positive_float,
    register_attack,
    run_attack,
    validate_eps,
)
from advlab.attacks.losses import LOSSES, objective
from advlab.threat import _rand


@dataclass(frozen=True)
class RFGSMConfig:
    """Hyper-parameters of R+FGSM. ``alpha=None`` means ``eps / 2`` for each budget."""

    alpha: float | None = None
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.alpha is not None:
            check_positive_float("alpha", self.alpha, allow_zero=True)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")


def _rfgsm_kernel(config: RFGSMConfig) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        alpha = eps / 2 if config.alpha is None else config.alpha
        noise = _rand("normal", tuple(x.shape), x, ctx.generator).sign_()
        x_rand = ctx.clip(x + alpha * noise)
        _, grad, _ = ctx.value_and_grad(x_rand, lambda z: objective(config.loss, z, y, ctx.targeted))
        return ctx.clip(x_rand + (eps - alpha) * grad.sign_())

    return kernel


@register_attack("rfgsm", norms=("linf",))
def rfgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    alpha: float | None = None,
    loss: str = "ce",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """RAND+FGSM: ``x' = x + α sign(N(0, I))``, ``x_adv = x' + (eps − α) sign(∇_x J(x', y))`` (Tramèr et al. 2018).

    Threat model: L∞ ball of radius ``eps`` intersected with the model's bounds (``x'`` is clipped to the
    bounds before the gradient is taken). The random step escapes the sharp curvature around data points
    that makes single-step attacks weak against adversarially trained models. Targeted (``y`` = targets)
    descends the loss of the target. One forward and one backward pass per example and budget.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels
            (targets when ``targeted``). eps: budget or list of budgets, raw input units. norm: ``linf`` only.
            alpha: length of the random step in raw units, ``0 <= alpha <= eps`` for every budget; ``None``
            (default) uses ``eps / 2`` per budget. loss: ``ce`` (default), ``margin`` or ``dlr``.
            generator: the random signs; same seed, same result. batch_size: chunk size. true_labels: true
            classes of a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> g = torch.Generator().manual_seed(0)
        >>> r = advlab.attacks.rfgsm(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.1, generator=g)
        >>> bool((r.norms <= 0.1 + 1e-6).all())
        True
    """
    config = RFGSMConfig(alpha=alpha, loss=loss)
    if config.alpha is not None:
        smallest = min((e for e in validate_eps(eps) if e > 0), default=None)
        if smallest is not None and config.alpha > smallest:
            raise ValueError(
                f"alpha={config.alpha} exceeds the budget eps={smallest}; the random step must fit in the ball "
                f"(0 <= alpha <= eps), or pass alpha=None for eps / 2"
            )
    return run_attack(
        "rfgsm", model, x, y, eps=eps, norm=norm, kernel=_rfgsm_kernel(config), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels, norms=("linf",),
    )
