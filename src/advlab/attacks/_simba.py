"""SimBA: simple black-box attack by coordinate-wise random search on the true class's probability, in the
pixel or the low-frequency DCT basis.

Reference: Guo, Gardner, You, Wilson & Weinberger, "Simple Black-box Adversarial Attacks", ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_choice, check_float, check_int
from advlab.attacks._blackbox import BlackBoxContext, BlackBoxKernel, counter_uniform, run_blackbox
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.attacks._square import as_images
from advlab.oracle import Oracle

BASES = ("pixel", "dct")
# A candidate is kept when it lowers the score by more than this (relative): float noise of a model evaluated in
# batches of another size does not decide.
IMPROVEMENT = 1e-6


@dataclass(frozen=True)
class SimBAConfig:
    """Hyper-parameters of SimBA: the step along each basis direction (the paper's ε) and the basis."""

    max_queries: int = 10_000
    step_size: float = 0.2
    basis: str = "pixel"

    def __post_init__(self) -> None:
        check_int("max_queries", self.max_queries)
        check_float("step_size", self.step_size, inclusive=False)
        check_choice("basis", self.basis, BASES)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: row ``k`` is the ``k``-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype)


def _order(seeds: Tensor, shape: tuple[int, int, int], basis: str) -> Tensor:
    """``(M, D)`` each example's order of the ``D = C * H * W`` basis directions: a random permutation (pixel),
    or the DCT frequencies ring by ring from the lowest (``max(u, v)`` ascending), in random order within a
    ring and over the channels."""
    c, h, w = shape
    noise = counter_uniform(seeds, 0, 20, (c * h * w,), torch.float64)
    if basis == "pixel":
        return noise.argsort(dim=1)
    u = torch.arange(h, device=seeds.device)[:, None].expand(h, w)
    v = torch.arange(w, device=seeds.device)[None, :].expand(h, w)
    ring = torch.maximum(u, v).to(torch.float64).expand(c, h, w).reshape(-1)
    return (ring[None, :] + noise).argsort(dim=1)


def _simba_kernel(config: SimBAConfig, norm: str) -> BlackBoxKernel:
    def kernel(ctx: BlackBoxContext, x0: Tensor, y: Tensor, eps: float) -> Tensor:
        seeds = ctx.example_seeds()
        x = as_images(x0)
        n, c, h, w = x.shape
        d = c * h * w
        order = _order(seeds, (c, h, w), config.basis)
        dct_h = dct_matrix(h, x.dtype).to(x.device) if config.basis == "dct" else None
        dct_w = dct_matrix(w, x.dtype).to(x.device) if config.basis == "dct" else None
        cur = x.clone()
        prob = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        tried = torch.zeros(n, dtype=torch.int64, device=x.device)  # directions tried by each example
        step = config.step_size
        sign = 1.0 if ctx.targeted else -1.0  # ascend the target's probability, else descend the true class's

        def score(z: Tensor, idx: Tensor) -> Tensor:
            """What is minimised: the log-probability of the true class (targeted: minus the target's)."""
            return -sign * z.gather(1, ctx.labels[idx][:, None]).squeeze(1).double()

        idx = torch.arange(n, device=x.device)
        idx = idx[ctx.affordable(idx, 1)]
        if idx.numel():
            z = ctx.scores(cur[idx].reshape(-1, *x0.shape[1:]), idx)
            prob[idx] = score(z, idx)
            done[idx] = ctx.is_adversarial(z.argmax(dim=1), idx)

        def direction(idx: Tensor) -> Tensor:
            """``(M, C, H, W)`` each example's next basis vector (unit L2), the order wrapping around."""
            coord = order[idx].gather(1, (tried[idx] % d)[:, None]).squeeze(1)
            if config.basis == "pixel":
                return torch.nn.functional.one_hot(coord, d).to(x.dtype).view(-1, c, h, w)
            assert dct_h is not None and dct_w is not None
            ch, rest = coord // (h * w), coord % (h * w)
            basis = dct_h[rest // w][:, :, None] * dct_w[rest % w][:, None, :]  # (M, H, W)
            return torch.nn.functional.one_hot(ch, c).to(x.dtype)[:, :, None, None] * basis[:, None]

        while True:
            # the next step must keep the perturbation inside the L2 ball (each step adds at most step_size)
            norms = (cur - x).flatten(1).norm(dim=1)
            room = norms**2 + step**2 <= eps**2 * (1 + 1e-6)
            idx = (~done & room).nonzero().squeeze(1)
            idx = idx[ctx.affordable(idx, 1)]
            if idx.numel() == 0:
                break
            q = direction(idx)
            tried[idx] += 1
            accepted = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
            for direction_sign in (-1.0, 1.0):  # x - step q first, then x + step q (the paper's order)
                open_ = (~accepted).nonzero().squeeze(1)
                if direction_sign > 0:
                    open_ = open_[ctx.affordable(idx[open_], 1)]
                if open_.numel() == 0:
                    break
                cand = ctx.clip(cur[idx[open_]] + direction_sign * step * q[open_])
                moves = (cand != cur[idx[open_]]).flatten(1).any(dim=1)  # a step clipped away costs no query
                open_, cand = open_[moves], cand[moves]
                if open_.numel() == 0:
                    continue
                rows = idx[open_]
                z = ctx.scores(cand.reshape(-1, *x0.shape[1:]), rows)
                value = score(z, rows)
                better = value < prob[rows] - IMPROVEMENT * (1 + prob[rows].abs())
                keep = rows[better]
                cur[keep], prob[keep] = cand[better], value[better]
                done[keep] = ctx.is_adversarial(z.argmax(dim=1), rows)[better]
                accepted[open_[better]] = True
        return cur.reshape(x0.shape)

    return kernel


@register_attack("simba", norms=("l2",), config=SimBAConfig)
def simba(
    model: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l2",
    max_queries: int = 10_000,
    step_size: float = 0.2,
    basis: str = "pixel",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """SimBA: coordinate-wise random search on the true class's probability (Guo et al. 2019).

    Score-based black-box attack. Each example walks through orthonormal directions ``q`` in its own random
    order: the pixel basis (SimBA), or the DCT basis from the lowest frequencies up (SimBA-DCT: ring
    ``max(u, v)`` by ring, random within a ring). For each ``q`` it tries ``x - step_size q``, then
    ``x + step_size q``, and keeps the first that lowers the probability of the true class (targeted: raises
    the target's); an example stops at its first adversarial point (early exit), when its budget is spent, or
    when one more step could leave the L2 ball. As the directions are orthonormal, ``T`` accepted steps have
    L2 norm ``step_size * sqrt(T)`` (less where clipped to the bounds): ``eps`` caps the number of steps.

    Threat model: L2 ball of radius ``eps`` (the paper reports the L2 norm of what SimBA finds; here it is a
    budget) intersected with the bounds. Cost: one query for the start, then one or two per direction.

    Args:
        model: an :class:`~advlab.oracle.Oracle` answering scores, or a model returning logits. x: ``(N, ...)``
            (read as images ``(N, C, H, W)``). y: ``(N,)`` labels (targets when ``targeted``). eps: budget(s).
            norm: ``l2``. max_queries: per example and budget (default 10,000). step_size: the paper's ε, the
            step along each direction (default 0.2, its ImageNet setting). basis: ``pixel`` (default) or
            ``dct``. generator: randomness (each example's order of directions); same seed, same result
            whatever the batch size. batch_size: chunk size. true_labels: true classes of a targeted run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.simba(model, torch.rand(3, 1, 8, 8), torch.arange(3), eps=1.0, max_queries=30,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> bool((r.distances <= 1.0 + 1e-6).all()) and bool((r.queries <= 30).all())
        True
    """
    config = SimBAConfig(max_queries=max_queries, step_size=step_size, basis=basis)
    return run_blackbox(
        "simba", model, x, y, eps=eps, norm=norm, kernel=_simba_kernel(config, norm), config=config,
        needs="scores", targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
