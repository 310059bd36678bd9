"""RAND+FGSM (R+FGSM): a random sign step, then an FGSM step with the rest of the budget.

Reference: Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, "Ensemble Adversarial Training: Attacks
and Defenses", ICLR 2018 (arXiv:1705.07204).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_choice, check_float, check_optional
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._losses import LOSSES, objective
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.attacks._validation import validate_eps
from advlab.threat import _rand


@dataclass(frozen=True)
class RFGSMConfig:
    """Hyper-parameters of R+FGSM. ``random_step=None`` means ``eps / 2`` for each budget."""

    random_step: float | None = None
    loss: str = "ce"

    def __post_init__(self) -> None:
        check_optional("random_step", self.random_step, check_float)
        check_choice("loss", self.loss, LOSSES)


def _normal(like: Tensor, generator: torch.Generator) -> Tensor:
    return _rand("normal", tuple(like.shape), like, generator)


def _rfgsm_kernel(config: RFGSMConfig) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        alpha = eps / 2 if config.random_step is None else config.random_step
        noise = ctx.random(_normal).rows().sign_()  # drawn per example: the same whatever the batch size
        x_rand = ctx.clip(x + alpha * noise)
        _, grad, _ = ctx.value_and_grad(x_rand, lambda z: objective(config.loss, z, y, ctx.targeted, ctx.true_labels))
        return ctx.clip(x_rand + (eps - alpha) * grad.sign_())

    return kernel


@register_attack("rfgsm", norms=("linf",), config=RFGSMConfig, kernel=lambda config, norm: _rfgsm_kernel(config))
def rfgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    random_step: float | None = None,
    loss: str = "ce",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """RAND+FGSM: ``x' = x + α sign(N(0, I))``, ``x_adv = x' + (eps − α) sign(∇_x J(x', y))`` (Tramèr et al. 2018).

    ``α`` is the length of the random step, ``random_step`` (the paper's α).

    Threat model: L∞ ball of radius ``eps`` intersected with the model's bounds (``x'`` is clipped to the
    bounds before the gradient is taken). The random step escapes the sharp curvature around data points
    that makes single-step attacks weak against adversarially trained models. Targeted (``y`` = targets)
    descends the loss of the target. One forward and one backward pass per example and budget.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels
            (targets when ``targeted``). eps: budget or list of budgets, raw input units. norm: ``linf`` only.
            random_step: ``α``, the length of the random step in raw units, ``0 <= α <= eps`` for every budget; ``None``
            (default) uses ``eps / 2`` per budget. loss: ``ce`` (default), ``margin`` or ``dlr``.
            generator: the random signs, drawn per example; same seed, same result whatever the batch size.
            batch_size: chunk size. true_labels: true
            classes of a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> g = torch.Generator().manual_seed(0)
        >>> r = advlab.attacks.rfgsm(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.1, generator=g)
        >>> bool((r.distances <= 0.1 + 1e-6).all())
        True
    """
    config = RFGSMConfig(random_step=random_step, loss=loss)
    if config.random_step is not None:
        smallest = min((e for e in validate_eps(eps) if e > 0), default=None)
        if smallest is not None and config.random_step > smallest:
            raise ValueError(
                f"random_step={config.random_step} exceeds the budget eps={smallest}; the random step must fit "
                f"in the ball (0 <= random_step <= eps), or pass random_step=None for eps / 2"
            )
    return run_attack(
        "rfgsm", model, x, y, eps=eps, norm=norm, kernel=_rfgsm_kernel(config), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
