"""HopSkipJumpAttack: a decision-based minimum-norm attack that walks along the decision boundary with
gradient directions estimated from label queries alone.

Reference: Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P
2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_float, check_int
from advlab.attacks._blackbox import BlackBoxContext, BlackBoxKernel, counter_uniform, keyed_normal, run_blackbox
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.oracle import Oracle

_GEOMETRIC_HALVINGS = 25  # the geometric step-size search halves the step at most this many times


@dataclass(frozen=True)
class HSJAConfig:
    """Hyper-parameters of HopSkipJumpAttack (the paper's defaults)."""

    max_queries: int = 5000
    steps: int = 64
    init_samples: int = 100
    max_samples: int = 10_000
    gamma: float = 1.0
    init_tries: int = 100
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_int("max_queries", self.max_queries)
        check_int("steps", self.steps)
        check_int("init_samples", self.init_samples)
        check_int("max_samples", self.max_samples)
        check_float("gamma", self.gamma, inclusive=False)
        check_int("init_tries", self.init_tries)
        check_bool("early_stop", self.early_stop)


def _hsja_kernel(config: HSJAConfig, norm: str) -> BlackBoxKernel:
    def kernel(ctx: BlackBoxContext, x: Tensor, y: Tensor, max_eps: float) -> Tensor:
        seeds = ctx.example_seeds()
        n = x.shape[0]
        d = x[0].numel()
        lo, hi = ctx.bounds
        view = (-1, *([1] * (x.ndim - 1)))
        theta = config.gamma / (d * math.sqrt(d))  # the binary search's tolerance (L2)
        device = x.device

        def decide(z: Tensor, idx: Tensor) -> Tensor:
            return ctx.is_adversarial(ctx.decisions(z, idx), idx)

        # -- an input already adversarial is its own answer (one query); the others start from uniform noise in
        # the bounds, drawn until adversarial, one try per query
        start = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=device)
        idx = torch.arange(n, device=device)
        idx = idx[ctx.affordable(idx, 1)]
        already = torch.zeros(n, dtype=torch.bool, device=device)
        if idx.numel():
            already[idx] = decide(x[idx], idx)
        found |= already
        for attempt in range(config.init_tries):
            idx = (~found).nonzero().squeeze(1)
            idx = idx[ctx.affordable(idx, 1)]
            if idx.numel() == 0:
                break
            noise = lo + (hi - lo) * counter_uniform(seeds[idx], attempt, 30, x.shape[1:], x.dtype)
            adv = decide(noise, idx)
            start[idx[adv]], found[idx[adv]] = noise[adv], True

        def binary_search(idx: Tensor, far: Tensor) -> Tensor:
            """Blends ``x`` and the adversarial ``far`` (of the examples ``idx``) down to the boundary: the
            blend ``(1 - a) x + a far`` that is adversarial, within ``theta`` of the smallest such ``a`` (or
            where the budget ran out)."""
            low = torch.zeros(idx.numel(), dtype=x.dtype, device=device)
            high = torch.ones_like(low)
            xi = x[idx]
            while True:
                open_ = ((high - low) > theta).nonzero().squeeze(1)
                open_ = open_[ctx.affordable(idx[open_], 1)]
                if open_.numel() == 0:
                    break
                mid = (high[open_] + low[open_]) / 2
                blend = xi[open_] + mid.view(view) * (far[open_] - xi[open_])
                adv = decide(blend, idx[open_])
                high[open_] = torch.where(adv, mid, high[open_])
                low[open_] = torch.where(adv, low[open_], mid)
            return xi + high.view(view) * (far - xi)

        cur = x.clone()
        idx = (found & ~already).nonzero().squeeze(1)
        if idx.numel():
            cur[idx] = binary_search(idx, start[idx])
        dist = (cur - x).flatten(1).norm(dim=1)
        active = found & ~already
        for t in range(config.steps):
            active &= dist > 0  # (a boundary point at x itself: nothing left to shrink)
            if config.early_stop:
                active &= dist > max_eps
            samples = min(int(config.init_samples * math.sqrt(t + 1)), config.max_samples)
            idx = active.nonzero().squeeze(1)
            ok = ctx.affordable(idx, samples + 1)
            active[idx[~ok]] = False  # cannot pay an estimate and one step: done
            idx = idx[ok]
            if idx.numel() == 0:
                break
            m = idx.numel()
            # -- the gradient direction at the boundary from the signs of samples x_t + delta u (u on the sphere)
            delta = (0.1 * (hi - lo)) if t == 0 else (math.sqrt(d) * theta * dist[idx])
            ones = [1] * (x.ndim - 1)
            delta_t = torch.as_tensor(delta, dtype=x.dtype, device=device).expand(m).reshape(-1, 1, *ones)
            u = keyed_normal(seeds[idx], t, 31, (samples, *x.shape[1:]), x.dtype)
            u = u / u.flatten(2).norm(dim=2).clamp(min=1e-12).view(m, samples, *ones)
            probes = ctx.clip(cur[idx][:, None] + delta_t * u)
            u = (probes - cur[idx][:, None]) / delta_t
            signs = decide(probes.reshape(m * samples, *x.shape[1:]), idx.repeat_interleave(samples))
            phi = signs.view(m, samples).to(x.dtype) * 2 - 1
            mean = phi.mean(dim=1, keepdim=True)
            mixed = (mean.abs() < 1).to(x.dtype)
            weights = mixed * (phi - mean) + (1 - mixed) * mean  # baseline correction unless all agree
            grad = torch.einsum("ms,ms...->m...", weights, u) / samples
            grad = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(view)
            # -- geometric step-size search: dist / sqrt(t + 1), halved until the step lands adversarial
            step = dist[idx] / math.sqrt(t + 1)
            moved = cur[idx].clone()
            pending = torch.ones(m, dtype=torch.bool, device=device)
            for _ in range(_GEOMETRIC_HALVINGS):
                open_ = pending.nonzero().squeeze(1)
                open_ = open_[ctx.affordable(idx[open_], 1)]
                if open_.numel() == 0:
                    break
                trial = ctx.clip(cur[idx[open_]] + step[open_].view(view) * grad[open_])
                adv = decide(trial, idx[open_])
                moved[open_[adv]] = trial[adv]
                pending[open_[adv]] = False
                step[open_[~adv]] /= 2
            stepped = ~pending
            # -- back to the boundary by a binary search between x and the new point
            rows = idx[stepped]
            if rows.numel():
                cur[rows] = binary_search(rows, moved[stepped])
                dist[rows] = (cur[rows] - x[rows]).flatten(1).norm(dim=1)
            active[idx[~stepped]] = False  # no adversarial step within the budget: the example keeps its point
        return cur

    return kernel


@register_attack("hsja", norms=("l2",), config=HSJAConfig, min_norm=True)
def hsja(
    model: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l2",
    max_queries: int = 5000,
    steps: int = 64,
    init_samples: int = 100,
    max_samples: int = 10_000,
    gamma: float = 1.0,
    init_tries: int = 100,
    early_stop: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """HopSkipJumpAttack: label-only minimum-norm attack along the decision boundary (Chen et al. 2020).

    Decision-based black-box attack: it sees only the top-1 label of an :class:`~advlab.oracle.Oracle` (a
    model is put behind ``Oracle(model, output="labels")``; a score oracle serves too). Start: uniform noise
    in the bounds until a draw is adversarial (at most ``init_tries`` queries), then a binary search on the
    blend of ``x`` and that noise to the boundary (an input already adversarial, found by one query, is
    returned as it is). Each iteration ``t``: the gradient direction at the boundary
    point is estimated from the decisions at ``B_t = init_samples * sqrt(t)`` (at most ``max_samples``) points
    ``x_t + delta_t u`` (``u`` uniform on the sphere, ``delta_t = sqrt(d) theta ||x_t - x||``, the first one
    ``0.1 * (bounds width)``), with the paper's baseline correction; a geometric search halves the step
    ``||x_t - x|| / sqrt(t)`` until it lands adversarial; a binary search (tolerance ``theta = gamma /
    d^{3/2}``) brings it back to the boundary. All examples' samples go to the oracle as one query.

    A minimum-norm attack (like ``cw`` and ``deepfool``): it runs once, with the largest budget, and the engine
    projects its result onto each budget's ball, so a budget smaller than the distance found is a failure.
    The point returned is always adversarial once a start was found (an example without one keeps ``x``);
    ``early_stop`` stops an example as soon as it lies within the largest budget (robust accuracy at that
    budget for fewer queries; the default spends the budget on shrinking the distance).

    Threat model: L2 ball of radius ``eps`` intersected with the bounds. Cost: the queries of the start, then
    per iteration ``B_t`` plus the step search plus the binary search, per example; an example stops when its
    budget cannot pay an estimate, keeping the last boundary point.

    Args:
        model: an :class:`~advlab.oracle.Oracle` (labels or scores), or a model returning logits. x: ``(N, ...)``
            inputs. y: ``(N,)`` labels (targets when ``targeted``: the start must then be found in the target
            class by noise, which may fail). eps: budget(s). norm: ``l2``. max_queries: per example (default
            5000). steps: iterations at most (default 64). init_samples: ``B_0`` (default 100). max_samples:
            cap of ``B_t`` (default 10,000). gamma: the paper's ``gamma`` (default 1.0). init_tries: noise draws
            for the start (default 100). early_stop: stop within ``max(eps)`` (default ``False``). generator:
            randomness, per example; same seed, same result whatever the batch size. batch_size: chunk size.
            true_labels: true classes of a targeted run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> oracle = advlab.Oracle(model, output="labels")
        >>> r = advlab.attacks.hsja(oracle, torch.rand(3, 1, 8, 8), torch.arange(3), eps=5.0, max_queries=300,
        ...                         generator=torch.Generator().manual_seed(0))
        >>> bool((r.queries <= 300).all())
        True
    """
    config = HSJAConfig(max_queries=max_queries, steps=steps, init_samples=init_samples, max_samples=max_samples,
                        gamma=gamma, init_tries=init_tries, early_stop=early_stop)
    return run_blackbox(
        "hsja", model, x, y, eps=eps, norm=norm, kernel=_hsja_kernel(config, norm), config=config, needs="labels",
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
