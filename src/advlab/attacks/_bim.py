"""Basic iterative method (BIM / I-FGSM) and the iterative least-likely class method (ILLC).

Reference: Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR workshop 2017
(arXiv:1607.02533).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from advlab.attacks.base import (
    AttackContext,
    AttackResult,
    Kernel,
    check_bool,
    check_logits,
    check_positive_float,
    check_positive_int,
    model_bounds,
    register_attack,
    run_attack,
    validate_eps,
    validate_inputs,
)
from advlab.attacks.iterative import iterate, steepest
from advlab.attacks.losses import LOSSES
from advlab.models.classifier import unchecked_inputs
from advlab.threat import LpBall, check_norm, least_likely_targets


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
        check_bool("early_stop", self.early_stop)
        if self.steps is not None:
            check_positive_int("steps", self.steps)
        if self.step_size is not None:
            check_positive_float("step_size", self.step_size)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")


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


@register_attack("bim", norms=("linf", "l2", "l1"))
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
        >>> bool((r.norms <= 8 / 255 + 1e-6).all())
        True
    """
    config = BIMConfig(steps=steps, step_size=step_size, loss=loss, early_stop=early_stop)
    norm = check_norm(norm)
    return run_attack(
        "bim", model, x, y, eps=eps, norm=norm, kernel=_bim_kernel(config, norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )


def _least_likely(
    model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int | None
) -> Tensor:
    """Least-likely class other than the true one, computed in eval mode without touching the model."""
    y = validate_inputs(x, y, model_bounds(model))
    training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    chunk = batch_size if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0 else None
    chunk = chunk or x.shape[0]
    targets = []
    try:
        with unchecked_inputs(model) if isinstance(model, nn.Module) else nullcontext():
            for s in range(0, x.shape[0], chunk):
                xb, yb = x[s : s + chunk].detach(), y[s : s + chunk]
                with torch.no_grad():
                    logits = model(xb)
                check_logits(logits, xb.shape[0])
                k = logits.shape[1]
                if int(yb.max()) >= k or int(yb.min()) < 0:
                    raise ValueError(
                        f"labels must be class indices in [0, {k - 1}] for this model, "
                        f"got values in [{int(yb.min())}, {int(yb.max())}]"
                    )
                targets.append(least_likely_targets(_Const(logits), xb, exclude=yb))
    finally:
        if isinstance(model, nn.Module) and training is not None:
            model.train(training)
    return torch.cat(targets)


class _Const:
    """A stand-in model returning precomputed logits (so the least-likely class costs one forward)."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits

    def __call__(self, _x: Tensor) -> Tensor:
        return self.logits


@register_attack("illc", norms=("linf", "l2", "l1"), targeted=False)
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
    validate_eps(eps)
    targets = _least_likely(model, x, y, batch_size)  # never the true class, which the engine re-checks
    result = run_attack(
        "illc", model, x, targets, eps=eps, norm=norm, kernel=_bim_kernel(config, norm), config=config,
        targeted=True, generator=generator, batch_size=batch_size, true_labels=y, clean_first=True,
    )
    result.config["targets"] = "least-likely class of the clean input (true class excluded)"
    return replace(result, n_forward=result.n_forward + x.shape[0], n_queries=result.n_queries + x.shape[0])
