"""Basic iterative method (BIM / I-FGSM) and the iterative least-likely class method (ILLC).

Reference: Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR workshop 2017
(arXiv:1607.02533).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_choice, check_float, check_int, check_optional
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._iterative import iterate, steepest
from advlab.attacks._losses import LOSSES
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import LpBall, check_norm, choose_targets


def bim_schedule(eps: float, bounds: tuple[float, float], norm: str) -> tuple[int, float]:
    """Kurakin et al.'s defaults for budget ``eps``: ``(steps, step_size)``.

    L∞: ``α = 1`` and ``min(ε + 4, 1.25 ε)`` steps on the 0-255 scale, i.e. ``α`` is 1/255 of the bounds
    range and ``ε`` is converted to that scale. L2/L1 (not in the paper): 10 steps of ``1.25 ε / 10``, the
    same total path length ``1.25 ε``.
    """
    if norm != "linf":
        return 10, 1.25 * eps / 10
    width = bounds[1] - bounds[0]
    e255 = eps / width * 255.0
    return max(1, math.ceil(min(e255 + 4.0, 1.25 * e255) - 1e-6)), width / 255.0


@dataclass(frozen=True)
class BIMConfig:
    """Hyper-parameters of BIM/ILLC. ``None`` means the paper's rule (see :func:`bim_schedule`)."""

    steps: int | None = None
    step_size: float | None = None
    loss: str = "ce"
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_optional("steps", self.steps, check_int)
        check_optional("step_size", self.step_size, check_float, inclusive=False)
        check_choice("loss", self.loss, LOSSES)
        check_bool("early_stop", self.early_stop)


def _bim_kernel(config: BIMConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        steps, alpha = bim_schedule(eps, ctx.bounds, norm)
        steps = config.steps if config.steps is not None else steps
        alpha = config.step_size if config.step_size is not None else alpha
        ball = LpBall(norm, eps)
        step = steepest(ball, alpha, ctx.bounds)
        return iterate(ctx, x, y, x, ball=ball, steps=steps, step=step, loss=config.loss,
                       true_labels=ctx.true_labels, early_stop=config.early_stop)[0]

    return kernel


@register_attack("bim", norms=("linf", "l2", "l1"), config=BIMConfig, kernel=_bim_kernel)
def bim(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    steps: int | None = None,
    step_size: float | None = None,
    loss: str = "ce",
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Basic iterative method (I-FGSM): repeated small FGSM steps, clipped to the ball (Kurakin et al. 2016).

    Threat model: L∞ ball of radius ``eps`` (L2/L1 with normalised / sparse steps) intersected with the
    model's bounds. ``x_{t+1} = Clip_{x,eps}(x_t + α sign(∇_x J(x_t, y)))`` from ``x_0 = x`` (no random
    start). Targeted (``y`` = targets) descends the loss of the target. The last adversarial iterate is kept.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` labels
            (targets when ``targeted``). eps: budget or list of budgets, raw input units. norm: ``linf``
            (default), ``l2`` or ``l1``. steps: iterations; ``None`` uses the paper's ``min(ε+4, 1.25ε)`` on
            the 0-255 scale (L∞; 10 for L2/L1). step_size: ``α``; ``None`` is 1/255 of the bounds range (L∞;
            ``1.25 eps / steps`` for L2/L1). loss: ``ce`` (default), ``margin`` or ``dlr``.
            early_stop: stop each example at its first adversarial iterate and return it (default ``False``;
            see :func:`~advlab.attacks.pgd`). generator: unused (deterministic). batch_size: chunk size.
            true_labels: true classes of a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.bim(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=8 / 255)
        >>> bool((r.distances <= 8 / 255 + 1e-6).all())
        True
    """
    config = BIMConfig(steps=steps, step_size=step_size, loss=loss, early_stop=early_stop)
    norm = check_norm(norm)
    return run_attack(
        "bim", model, x, y, eps=eps, norm=norm, kernel=_bim_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )


@register_attack("illc", norms=("linf", "l2", "l1"), config=BIMConfig, targeted=False)
def illc(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    steps: int | None = None,
    step_size: float | None = None,
    loss: str = "ce",
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Iterative least-likely class method: targeted BIM toward the least-likely class (Kurakin et al. 2016).

    Threat model: as :func:`bim`. The target of each example is the class the model finds least likely on
    the clean input, ``argmin_c p(c | x)``, excluding the true class (which a misclassified example may
    otherwise have as its least-likely class); computing it costs one forward pass per example, counted in
    ``n_forward``. ``success`` means the least-likely class was hit; the targets are ``result.labels`` (and
    ``result.config["targets"]`` says how they were chosen); ``clean_correct`` compares the clean prediction
    with the true labels ``y``.

    Args:
        y: ``(N,)`` true labels. targeted: must stay ``False`` (the attack chooses its own targets; for
            given targets use :func:`bim` with ``targeted=True``). Others as :func:`bim`.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.illc(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.3)
        >>> bool((r.labels != torch.arange(4)).all())
        True
    """
    if targeted:
        raise ValueError(
            "illc chooses its own targets (the least-likely classes), so targeted=True is not supported; "
            "use bim(..., targeted=True) with your target classes"
        )
    config = BIMConfig(steps=steps, step_size=step_size, loss=loss, early_stop=early_stop)
    norm = check_norm(norm)
    result = run_attack(
        "illc", model, x, y, eps=eps, norm=norm, kernel=_bim_kernel(config, norm), config=config,
        generator=generator, batch_size=batch_size,
        choose_targets=lambda logits, labels: choose_targets("least-likely", labels, logits=logits),
    )
    result.config["targets"] = "least-likely class of the clean input (true class excluded)"
    return result
