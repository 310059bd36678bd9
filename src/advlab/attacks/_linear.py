"""The weight_sign attack on linear classifiers: one step along the sign of a difference of class weights.

References: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015 (the
linear view: a step of ``eps * sign(w)`` moves a linear score by ``eps * ||w||_1``); Karpathy, "Breaking Linear
Classifiers on ImageNet", blog post, 2015 (the same step on the weights of a linear classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import clip_to_bounds

_TINY = 1e-12
# Modules that leave a linear model linear in evaluation mode.
_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class WeightSignConfig:
    """Hyper-parameters of the weight_sign attack: none (the step is fixed by the weights and ``eps``). It is
    registered for ``linear`` models; a zoo ``softmax`` network qualifies too."""


def linear_weights(model: object, like: Tensor) -> tuple[Tensor, Tensor]:
    """The effective weights ``(W (K, D), b (K,))`` of a linear model on raw, flattened inputs shaped like
    ``like[0]``: ``model(x) = x.flatten(1) @ W.T + b``.

    Accepts a :func:`advlab.models.from_sklearn` linear model (``linear_weights()``) and a network that is one
    ``nn.Linear`` behind ``Flatten``/``Identity``/``Dropout`` (the zoo's ``softmax``), either bare or inside a
    ``Classifier``, whose normalisation ``(x - mean) / std`` is folded into ``W`` and ``b``. Anything else
    raises ``TypeError``."""
    net: Any = getattr(model, "net", model)
    if callable(getattr(net, "linear_weights", None)):
        weight, bias = net.linear_weights()
    else:
        layers = list(net.children()) if isinstance(net, nn.Sequential) else [net]
        linear = [m for m in layers if isinstance(m, nn.Linear)]
        if len(linear) != 1 or not all(isinstance(m, (nn.Linear, *_PASS_THROUGH)) for m in layers):
            raise TypeError(
                f"weight_sign needs a linear model (advlab.models.from_sklearn of a linear estimator, or a "
                f"network that is one nn.Linear such as create_model('softmax')), got {type(net).__name__}; "
                f"for a non-linear model use fgsm or pgd"
            )
        weight = linear[0].weight
        bias = linear[0].bias if linear[0].bias is not None else torch.zeros_like(weight[:, 0])
    weight, bias = weight.detach().to(like.dtype), bias.detach().to(like.dtype)
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, Tensor) and isinstance(std, Tensor):
        shape = like.shape[1:]
        m = mean.to(like.dtype).expand(1, *shape).reshape(-1) if mean.ndim == like.ndim else mean.reshape(-1)
        s = std.to(like.dtype).expand(1, *shape).reshape(-1) if std.ndim == like.ndim else std.reshape(-1)
        weight = weight / s
        bias = bias - weight @ m
    if weight.shape[1] != like[0].numel():
        raise ValueError(
            f"the linear model takes {weight.shape[1]} features but the inputs have {like[0].numel()} per example"
        )
    return weight, bias


def _weight_sign_kernel(norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        weight, bias = linear_weights(ctx.model, x)
        n, k = x.shape[0], weight.shape[0]
        flat = x.reshape(n, -1)
        if ctx.targeted:
            # The class to overtake: the true one when given, else the clean prediction (or, where that is
            # already the target, the runner-up).
            logits = ctx.clean_logits().to(x.dtype)
            runner_up = logits.scatter(1, y[:, None], -torch.inf).argmax(dim=1)
            source = ctx.true_labels if ctx.true_labels is not None else logits.argmax(dim=1)
            source = torch.where(source == y, runner_up, source)
            direction = weight[y] - weight[source]  # (n, D)
            steps = _step(direction, eps, norm)[:, None]  # (n, 1, D)
        else:
            # Every sign step towards a rival t, (n, K, D); each example keeps the one whose clipped point
            # has the largest untargeted margin max_{j != y} f_j - f_y.
            steps = _step(weight[None, :, :] - weight[y][:, None, :], eps, norm)
        points = clip_to_bounds(flat[:, None, :] + steps, ctx.bounds)
        if ctx.targeted:
            return points[:, 0].reshape(x.shape)
        scores = points @ weight.T + bias  # (n, K candidates, K classes)
        own = scores.gather(2, y[:, None, None].expand(n, k, 1)).squeeze(2)
        margin = scores.scatter(2, y[:, None, None].expand(n, k, 1), -torch.inf).amax(dim=2) - own
        margin = margin.scatter(1, y[:, None], -torch.inf)  # the step towards y itself is no candidate
        best = margin.argmax(dim=1)
        return points[torch.arange(n, device=x.device), best].reshape(x.shape)

    return kernel


def _step(direction: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return eps * direction.sign()
    return eps * direction / direction.norm(dim=-1, keepdim=True).clamp(min=_TINY)


@register_attack("weight_sign", norms=("linf", "l2"), config=WeightSignConfig, models=("linear",))
def weight_sign(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Weight-sign attack on a linear classifier (Goodfellow et al. 2015; Karpathy 2015): ``x + eps * sign(w_t - w_y)``.

    For a linear model ``f(x) = W x + b`` the margin ``f_t - f_y`` of class ``t`` over class ``y`` has the
    constant gradient ``w_t - w_y``, so the step ``eps * sign(w_t - w_y)`` raises it by exactly
    ``eps * ||w_t - w_y||_1``, the most any L∞ step of size ``eps`` can (before clipping to the bounds). The
    result is ``clip(x + eps * sign(w_t - w_y))`` in closed form: no gradient and no query is needed.

    Targeted: ``t`` is the target and ``y`` the true class (``true_labels``; without them the clean
    prediction, or its runner-up where that is already the target). Untargeted: each example takes, among
    the ``K - 1`` steps towards a rival ``t``, the one whose clipped point has the largest margin
    ``max_{j != y} f_j - f_y``, computed from the weights for all rivals at once. With ``norm="l2"`` the
    step is ``eps * (w_t - w_y) / ||w_t - w_y||_2`` instead.

    The model must be linear: a :func:`advlab.models.from_sklearn` linear model (logistic regression, linear
    SVM, ...) or a network that is one ``nn.Linear`` (the zoo's ``softmax``), bare or in a ``Classifier``
    (its normalisation is folded into the weights); anything else raises ``TypeError``.

    Threat model: the L∞ (or L2) ball of radius ``eps`` intersected with the model's bounds; run once per budget.

    Args:
        model: a linear model (see above). x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)``
            true classes, or targets when ``targeted``. eps: budget(s) in raw input units. norm: ``linf``
            (default) or ``l2``. targeted: reach the class ``y``. generator: unused (deterministic).
            batch_size: chunk size. true_labels: true classes of a targeted run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> r = advlab.attacks.weight_sign(model, x, torch.tensor([1, 2, 3, 4]), eps=0.1)
        >>> bool(((r.x_adv[0] - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    config = WeightSignConfig()
    return run_attack(
        "weight_sign", model, x, y, eps=eps, norm=norm, kernel=_weight_sign_kernel(norm), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
