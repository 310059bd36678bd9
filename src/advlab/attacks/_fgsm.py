"""Fast gradient sign method (FGSM) and its L2/L1 form, the fast gradient method (FGM).

Reference: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_choice
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._losses import LOSSES, objective
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import LpBall


@dataclass(frozen=True)
class FGMConfig:
    """Hyper-parameters of FGSM/FGM: the loss whose gradient gives the direction."""

    loss: str = "ce"

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)


def _fgm_kernel(config: FGMConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        def obj(z: Tensor) -> Tensor:
            return objective(config.loss, z, y, ctx.targeted, ctx.true_labels)

        _, grad, _ = ctx.value_and_grad(x, obj, memo_key=config.loss)
        return ctx.clip(x + LpBall(norm, eps).steepest_step(grad, eps, x=x, bounds=ctx.bounds))

    return kernel


@register_attack("fgm", norms=("l2", "linf", "l1"), config=FGMConfig, kernel=_fgm_kernel)
def fgm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l2",
    loss: str = "ce",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """One steepest-ascent step of length ``eps`` on the loss (fast gradient method, Goodfellow et al. 2015).

    Threat model: L_p ball of radius ``eps`` (``norm`` in linf/l2/l1) intersected with the model's bounds.
    ``x_adv = clip(x + eps * s)`` with ``s`` the unit-L_p steepest-ascent direction of the loss (sign of the
    gradient for linf, the normalised gradient for l2, a sparse step for l1). Targeted: descends the
    cross-entropy of the target class given in ``y``.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels (targets
            when ``targeted``). eps: budget or list of budgets. norm: default ``l2``. loss: ``ce`` (default),
            ``margin`` or ``dlr``. generator: unused (deterministic). batch_size: chunk size.
            true_labels: true classes for a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.fgm(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.5)
        >>> r.distances.shape
        torch.Size([1, 4])
    """
    config = FGMConfig(loss=loss)
    return run_attack(
        "fgm", model, x, y, eps=eps, norm=norm, kernel=_fgm_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
        clean_first=True,
    )


@register_attack("fgsm", norms=("linf",), config=FGMConfig, kernel=_fgm_kernel)
def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    loss: str = "ce",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Fast gradient sign method: ``x_adv = clip(x + eps * sign(∇_x J(x, y)))`` (Goodfellow et al. 2015).

    Threat model: L∞ ball of radius ``eps`` intersected with the model's bounds. Targeted (``targeted=True``,
    ``y`` = targets): ``x_adv = clip(x - eps * sign(∇_x J(x, t)))``, the "fast gradient sign targeted" step.
    Exactly one forward and one backward pass per example and budget.

    Args: as :func:`fgm`, with ``norm`` fixed to ``linf``.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.fgsm(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=[0.1, 0.3])
        >>> bool((r.distances <= torch.tensor([[0.1], [0.3]]) + 1e-6).all())
        True
    """
    config = FGMConfig(loss=loss)
    return run_attack(
        "fgsm", model, x, y, eps=eps, norm=norm, kernel=_fgm_kernel(config, "linf"), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )
