"""Jacobian-based saliency map attack (JSMA): an L0 attack that changes a few features, two at a time.

Reference: Papernot, McDaniel, Jha, Fredrikson, Celik & Swami, "The Limitations of Deep Learning in
Adversarial Settings", IEEE EuroS&P 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_choice, check_float
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.threat import is_adversarial

# The pair search builds (m, d, d) score tensors; m is chosen so that one holds at most this many elements.
_PAIR_ELEMENTS = 1 << 23
SALIENCY = ("probs", "logits")


@dataclass(frozen=True)
class JSMAConfig:
    """Hyper-parameters of JSMA: the change per chosen feature and the saliency map (the number of features
    changed is the L0 budget ``eps``)."""

    theta: float = 1.0
    saliency: str = "probs"

    def __post_init__(self) -> None:
        check_float("theta", self.theta, minimum=-1.0, maximum=1.0)
        if self.theta == 0:
            raise ValueError("theta must be in [-1, 0) or (0, 1] (a fraction of the input range), got 0")
        check_choice("saliency", self.saliency, SALIENCY)


def _best_pairs(a: Tensor, b: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each row, the pair ``p != q`` in ``domain`` maximising ``-(a_p + a_q)(b_p + b_q)`` subject to
    ``a_p + a_q > 0`` and ``b_p + b_q < 0``. Returns ``(p, q, valid)``, each ``(m,)``."""
    m, d = a.shape
    # max(A, 0) * max(-B, 0) equals -A*B on the allowed pairs and 0 elsewhere; a feature outside the domain
    # gets a = -inf, so every pair containing it scores 0.
    a = a.masked_fill(~domain, -torch.inf)
    p_all, q_all, ok_all = [], [], []
    rows = max(1, _PAIR_ELEMENTS // (d * d))
    for s in range(0, m, rows):  # chunks of examples, to bound memory (never one example at a time)
        ac, bc = a[s : s + rows], b[s : s + rows]
        score = (ac[:, :, None] + ac[:, None, :]).clamp_(min=0)
        score.mul_((bc[:, :, None] + bc[:, None, :]).neg_().clamp_(min=0))
        score.diagonal(dim1=1, dim2=2).zero_()
        best, idx = score.flatten(1).max(dim=1)
        p_all.append(idx // d)
        q_all.append(idx % d)
        ok_all.append(best > 0)
    return torch.cat(p_all), torch.cat(q_all), torch.cat(ok_all)


def _top_pairs(a: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The pair search when ``b = -a`` (softmax outputs): the score ``(a_p + a_q)^2`` with ``a_p + a_q > 0`` is
    largest for the two largest ``a`` in the domain."""
    top = a.masked_fill(~domain, -torch.inf).topk(2, dim=1)
    return top.indices[:, 0], top.indices[:, 1], top.values.sum(dim=1) > 0


def _jsma_kernel(config: JSMAConfig) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        lo, hi = ctx.bounds
        n, d = x.shape[0], x[0].numel()
        sign = 1.0 if config.theta > 0 else -1.0
        change = sign * abs(config.theta) * (hi - lo)
        x_adv = x.reshape(n, d).clone()
        # Features that can still move in the direction of theta; a feature is changed at most once.
        domain = x_adv < hi if sign > 0 else x_adv > lo
        budget = min(int(eps), d) // 2  # pairs of features
        active = torch.arange(n, device=x.device)
        for _ in range(budget):
            xa = x_adv[active].reshape(-1, *x.shape[1:]).requires_grad_(True)
            ya = y[active]
            with torch.enable_grad():
                logits = ctx.forward(xa)
                keep = ~is_adversarial(logits.detach(), ya, ctx.targeted) & domain[active].sum(1).ge(2)
                if not bool(keep.any()):
                    break
                if config.saliency == "probs":
                    # d log p_y orders features like d p_y (a positive factor per example) without underflow.
                    own = torch.log_softmax(logits, dim=1).gather(1, ya[:, None]).sum()
                    g_own = ctx.grad(own, xa)
                else:
                    g_own = ctx.grad(logits.gather(1, ya[:, None]), xa, retain_graph=True)
                    g_all = ctx.grad(logits, xa)
            active, g_own = active[keep], g_own[keep].reshape(-1, d)
            if config.saliency == "probs":
                # The other probabilities sum to 1 - p_y, so their gradient is -d p_y: one map decides.
                p, q, ok = _top_pairs(sign * (g_own if ctx.targeted else -g_own), domain[active])
            else:
                g_rest = g_all[keep].reshape(-1, d) - g_own
                # Targeted: raise the target, lower the rest. Untargeted: raise the rest, lower the true class.
                a, b = (g_own, g_rest) if ctx.targeted else (g_rest, g_own)
                p, q, ok = _best_pairs(sign * a, sign * b, domain[active])
            if not bool(ok.any()):
                break
            active, p, q = active[ok], p[ok], q[ok]
            for idx in (p, q):
                x_adv[active, idx] = (x_adv[active, idx] + change).clamp(lo, hi)
                domain[active, idx] = False
        return x_adv.reshape(x.shape)

    return kernel


@register_attack("jsma", norms=("l0",), config=JSMAConfig, min_norm=True)
def jsma(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l0",
    theta: float = 1.0,
    saliency: str = "probs",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Jacobian-based saliency map attack (Papernot et al., EuroS&P 2016): changes a few features, two at a time.

    An L0 attack. Each iteration computes the saliency of every feature still in the search domain and
    moves the best *pair* ``(p, q)`` by ``theta`` times the bounds range (``theta = 1``: to the upper bound;
    ``theta < 0`` decreases features), after which both leave the domain. With ``a = ∂(target)/∂x`` and
    ``b = ∂(other classes)/∂x`` the pair maximises ``-(a_p + a_q)(b_p + b_q)`` subject to ``a_p + a_q > 0`` and
    ``b_p + b_q < 0`` (signs flipped for ``theta < 0``). An example stops once it reaches its goal, when no
    pair qualifies, or after ``floor(eps / 2)`` pairs, so at most ``eps`` of its ``d`` features change. Fully
    batched; the ``(d, d)`` pair search runs on chunks of examples.

    ``saliency``: ``"probs"`` (default; "JSMA-F" in Carlini & Wagner's naming) differentiates the softmax
    outputs; since the other probabilities sum to ``1 - p_t``, ``b = -a`` and the best pair is the two
    features with the largest ``∂p_t/∂x``, found by a top-2 (one backward pass per iteration). ``"logits"``
    ("JSMA-Z") differentiates the logits, with the full pair search (two backward passes per iteration);
    it is the weaker of the two on small MNIST CNNs (about 70% vs 98% targeted success with 10% of the
    features).

    Targeted (``y`` = targets): raises the target's score and lowers the others'. Untargeted (``y`` = true
    classes): the roles swap, i.e. it raises the other classes' scores and lowers the true class's, and
    stops at the first misclassification.

    Threat model: an L0 ball (``norm="l0"``): ``eps`` is the number of input features (pixels times
    channels) that may change; the paper's ``gamma`` is ``eps / d`` (MNIST's 10%: ``eps=78``). Each changed
    feature moves by ``theta`` times the bounds range, clipped to the bounds. The attack runs once (with the
    largest budget) and every smaller budget keeps the ``eps`` largest changes, as for minimum-norm attacks.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` targets (when
            ``targeted``) or true classes. eps: L0 budget(s), numbers of features. norm: ``l0`` only.
        theta: change per chosen feature as a fraction of the bounds range, in ``[-1, 0) ∪ (0, 1]`` (default 1).
        saliency: ``probs`` (default) or ``logits``, see above. targeted: ``y`` holds targets (the paper's
            setting). generator: unused (deterministic). batch_size: chunk size. true_labels: true classes
            of a targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> r = advlab.attacks.jsma(model, x, torch.tensor([1, 2, 3, 4]), eps=16, targeted=True)
        >>> bool((r.distances[0] <= 16).all())
        True
    """
    config = JSMAConfig(theta=theta, saliency=saliency)
    return run_attack(
        "jsma", model, x, y, eps=eps, norm=norm, kernel=_jsma_kernel(config), config=config, targeted=targeted,
        generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )
