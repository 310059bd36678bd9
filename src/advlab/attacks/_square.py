"""Square Attack: score-based random search over square-shaped updates, for L∞ and L2.

Reference: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_float, check_int
from advlab.attacks._blackbox import BlackBoxContext, BlackBoxKernel, counter_signs, counter_uniform, run_blackbox
from advlab.attacks._losses import margin_objective
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.oracle import Oracle

# The paper's schedule of the square size: the fraction ``p`` of pixels a square covers halves at these
# points of a 10,000-query run, rescaled to the query budget.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_REFERENCE_HORIZON = 10_000
# A candidate is kept when it lowers the margin by more than this (relative): float noise of a model evaluated in
# batches of another size does not decide.
IMPROVEMENT = 1e-6
_REDRAWS = 4  # L∞: a window whose clipped update equals the current one is redrawn up to this many times


@dataclass(frozen=True)
class SquareConfig:
    """Hyper-parameters of the Square Attack. ``p_init``: the initial fraction of the image a square covers."""

    max_queries: int = 5000
    p_init: float = 0.3

    def __post_init__(self) -> None:
        check_int("max_queries", self.max_queries)
        check_float("p_init", self.p_init, maximum=1.0, inclusive=False)


def p_schedule(p_init: float, step: Tensor, horizon: int) -> Tensor:
    """``(M,)`` square fractions at each example's query ``step`` (``(M,)`` int64): ``p_init`` halved at the
    paper's points (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 queries) rescaled to ``horizon``."""
    it = step * _REFERENCE_HORIZON // max(horizon, 1)
    halvings = torch.zeros_like(it)
    for t in _HALVINGS:
        halvings += it > t
    return p_init / torch.pow(2.0, halvings.to(torch.float64))


def as_images(x: Tensor) -> Tensor:
    """``x`` viewed as ``(N, C, H, W)``: images as they are, ``(N, H, W)`` with one channel, flat features
    ``(N, D)`` as one row of ``D`` pixels; further leading dimensions are folded into the channels."""
    if x.ndim == 2:
        return x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.ndim == 3:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _window(size: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """``(M, 1, H, W)`` bool masks of the squares of side ``size`` at ``(top, left)`` (all ``(M,)``)."""
    rows = torch.arange(h, device=size.device)[None, :]
    cols = torch.arange(w, device=size.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + size)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + size)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _positions(u: Tensor, size: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Square corners uniform over the valid positions, from uniforms ``u`` ``(M, 2)``."""
    top = (u[:, 0] * (h - size + 1).to(u.dtype)).floor().long().clamp(min=0)
    left = (u[:, 1] * (w - size + 1).to(u.dtype)).floor().long().clamp(min=0)
    return torch.minimum(top, h - size), torch.minimum(left, w - size)


def _loss(ctx: BlackBoxContext, logscores: Tensor, idx: Tensor) -> Tensor:
    """The margin to minimise: ``z_y - max_{j≠y} z_j`` (targeted: ``max_{j≠t} z_j - z_t``); adversarial below 0."""
    return -margin_objective(logscores, ctx.labels[idx], ctx.targeted)


def _rect(rows: int, cols: int) -> Tensor:
    """The paper's pseudo-Gaussian rectangle: concentric rectangles of weight ``1 / (k + 1)^2``, unit L2."""
    out = torch.zeros(rows, cols, dtype=torch.float64)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(r0 + 1, c0 + 1)):
        out[max(r0 - k, 0) : min(r0 - k + 2 * k + 1, rows), max(c0 - k, 0) : min(c0 - k + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return out / out.norm().clamp(min=1e-12)


def _meta_pattern(s: int) -> Tensor:
    """The L2 update of side ``s``: a pseudo-Gaussian bump over the top half, its negative below, unit L2."""
    out = torch.zeros(s, s, dtype=torch.float64)
    if s // 2:
        out[: s // 2] = _rect(s // 2, s)
    out[s // 2 :] = -_rect(s - s // 2, s)
    return out / out.norm()


def _pattern_table(side: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(side + 1, 2, side, side)``: the meta pattern of every size ``s`` (and its transpose), top-left."""
    table = torch.zeros(side + 1, 2, side, side, dtype=torch.float64)
    for s in range(1, side + 1):
        pat = _meta_pattern(s)
        table[s, 0, :s, :s], table[s, 1, :s, :s] = pat, pat.T
    return table.to(dtype=dtype, device=device)


def _placed(table: Tensor, size: Tensor, flip: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """``(M, 1, H, W)``: each example's pattern of side ``size`` (transposed where ``flip``) at its corner."""
    rows = torch.arange(h, device=size.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=size.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size[:, None]))[:, :, None] & ((cols >= 0) & (cols < size[:, None]))[:, None, :]
    side = table.shape[-1]
    vals = table[size[:, None, None], flip.long()[:, None, None], rows.clamp(0, side - 1)[:, :, None],
                 cols.clamp(0, side - 1)[:, None, :]]
    return torch.where(inside, vals, torch.zeros_like(vals))[:, None]


def _l2_init(x: Tensor, eps: float, seeds: Tensor) -> Tensor:
    """The paper's L2 start: a grid of meta patterns of side ``H // 5`` with random signs per channel, the
    whole perturbation scaled to L2 norm ``eps``."""
    c, h, w = x.shape[1:]
    s = max(min(h, w) // 5, 1)
    start_h, start_w = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
    tiles_h, tiles_w = (h - start_h) // s, (w - start_w) // s
    signs = counter_signs(seeds, 0, 10, (tiles_h, tiles_w, c), x.dtype)
    flips = counter_uniform(seeds, 0, 11, (tiles_h, tiles_w)) < 0.5
    pat = _meta_pattern(s).to(x.dtype).to(x.device)
    delta = torch.zeros_like(x)
    for i in range(tiles_h):
        for j in range(tiles_w):
            tile = torch.where(flips[:, i, j, None, None], pat.T, pat)[:, None]  # (n, 1, s, s)
            r, q = start_h + i * s, start_w + j * s
            delta[:, :, r : r + s, q : q + s] += tile * signs[:, i, j, :, None, None]
    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
    return delta * (eps / norm)[:, None, None, None]


def _square_kernel(config: SquareConfig, norm: str) -> BlackBoxKernel:
    def kernel(ctx: BlackBoxContext, x0: Tensor, y: Tensor, eps: float) -> Tensor:
        seeds = ctx.example_seeds()
        x = as_images(x0)
        n, c, h, w = x.shape
        horizon = ctx.session.max_queries or _REFERENCE_HORIZON  # the schedule spans the budget
        view = (-1, 1, 1, 1)
        # the start: vertical stripes of ±eps (L∞) or the grid of meta patterns (L2)
        if norm == "linf":
            start = eps * counter_signs(seeds, 0, 0, (c, 1, w), x.dtype).expand(n, c, h, w)
        else:
            start = _l2_init(x, eps, seeds)
        best = ctx.clip(x + start)
        margin = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        idx = torch.arange(n, device=x.device)
        idx = idx[ctx.affordable(idx, 1)]
        if idx.numel():
            z = ctx.scores(best[idx].reshape(-1, *x0.shape[1:]), idx)
            margin[idx] = _loss(ctx, z, idx).double()
            done[idx] = ctx.is_adversarial(z.argmax(dim=1), idx)
        table = _pattern_table(min(h, w), x.dtype, x.device) if norm == "l2" else None
        largest = max(min(h, w) - 1, 1)
        while True:
            idx = (~done).nonzero().squeeze(1)
            idx = idx[ctx.affordable(idx, 1)]
            if idx.numel() == 0:
                break
            step = ctx.used(idx)  # the example's own query count drives its schedule and its random numbers
            p = p_schedule(config.p_init, step, horizon)
            s_idx = seeds[idx]
            xi, cur = x[idx], best[idx]
            if norm == "linf":
                size = torch.sqrt(p * h * w).round().long().clamp(1, largest)
                top, left = _positions(counter_uniform(s_idx, step, 1, (2,), torch.float64), size, h, w)
                mask = _window(size, top, left, h, w)
                cand = cur
                pending = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
                for attempt in range(_REDRAWS):
                    signs = eps * counter_signs(s_idx, step, 2 + attempt, (c, 1, 1), x.dtype)
                    trial = ctx.clip(xi + torch.where(mask, signs, cur - xi))
                    cand = torch.where(pending.view(view), trial, cand)
                    pending &= (cand == cur).flatten(1).all(dim=1)  # the update changed nothing: redraw
                    if not bool(pending.any()):
                        break
            else:
                assert table is not None
                size = torch.sqrt(p * h * w).round().long().clamp(min=3)
                size = (size + (1 - size % 2)).clamp(1, largest)
                u = counter_uniform(s_idx, step, 1, (5,), torch.float64)
                top1, left1 = _positions(u[:, :2], size, h, w)
                top2, left2 = _positions(u[:, 2:4], size, h, w)
                win1, win2 = _window(size, top1, left1, h, w), _window(size, top2, left2, h, w)
                delta = cur - xi
                both = win1 | win2
                in_win1 = (delta * win1).flatten(2).norm(dim=2)[:, :, None, None]  # (M, C, 1, 1)
                whole = delta.flatten(1).norm(dim=1).view(view)
                in_both = (delta * both).flatten(2).norm(dim=2)[:, :, None, None]
                signs = counter_signs(s_idx, step, 2, (c, 1, 1), x.dtype)
                new = _placed(table, size, u[:, 4] < 0.5, top1, left1, h, w) * signs
                new = new + delta * win1 / (in_win1 + 1e-10)
                new_norm = new.flatten(2).norm(dim=2)[:, :, None, None].clamp(min=1e-12)
                room = ((eps**2 - whole**2).clamp(min=0.0) / c + in_both**2).sqrt()
                delta = torch.where(both, torch.zeros_like(delta), delta) + new * (room / new_norm) * win1
                total = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(view)
                cand = ctx.clip(xi + delta * (eps / total))
            z = ctx.scores(cand.reshape(-1, *x0.shape[1:]), idx)
            loss = _loss(ctx, z, idx).double()
            better = loss < margin[idx] - IMPROVEMENT * (1 + margin[idx].abs())
            rows = idx[better]
            best[rows], margin[rows] = cand[better], loss[better]
            done[rows] = ctx.is_adversarial(z.argmax(dim=1), idx)[better]
        return best.reshape(x0.shape)

    return kernel


@register_attack("square", norms=("linf", "l2"), config=SquareConfig)
def square(
    model: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    max_queries: int = 5000,
    p_init: float = 0.3,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Square Attack: random search over square updates at the boundary of the ball (Andriushchenko et al. 2020).

    Score-based black-box attack: it sees only the class scores of an :class:`~advlab.oracle.Oracle` (a model
    is put behind ``Oracle(model, output="scores")``) and minimises the margin of the log-scores,
    ``z_y - max_{j≠y} z_j`` (targeted: ``max_{j≠t} z_j - z_t``). L∞: the start is vertical stripes of
    ``±eps``; each step redraws one square window of side ``s`` to ``±eps`` per channel (a window whose
    clipped update would change nothing is redrawn) and keeps the candidate if the margin drops. L2: the start
    is a grid of the paper's pseudo-Gaussian patterns; each step moves the perturbation mass of two windows
    into the first, as a fresh pattern, and rescales the whole to L2 norm ``eps``. The square covers a fraction
    ``p`` of the image, ``p_init`` halved at the paper's points of a 10,000-query run (10, 50, 200, 500, ...,
    8000) rescaled to the query budget; ``s = round(sqrt(p * H * W))`` (L2: odd, at least 3).

    Threat model: L∞ or L2 ball of radius ``eps`` intersected with the bounds. Cost: one query for the start
    and one per step, per example; an example stops at its first adversarial point (early exit) or when its
    budget is spent, keeping the best point found. Every example has its own square positions, sizes (from its
    own query count) and signs, vectorised over the batch. Inputs are read as images ``(N, C, H, W)``
    (``(N, D)`` as one row of pixels).

    Args:
        model: an :class:`~advlab.oracle.Oracle` answering scores, or a model returning logits (a module, a
            fitted scikit-learn classifier). x: ``(N, ...)`` inputs. y: ``(N,)`` labels (targets when
            ``targeted``). eps: budget or list of budgets (each run on its own, with its own budget of queries).
            norm: ``linf`` (default) or ``l2``. max_queries: queries per example and budget (default 5000; the
            paper's runs use up to 10,000); an oracle's smaller ``max_queries`` applies instead.
            p_init: initial fraction of pixels a square covers (default 0.3, the paper's choice for MNIST; it
            uses 0.05 for ImageNet at L∞ and 0.1 at L2). generator: randomness, per example; same seed, same
            result whatever the batch size. batch_size: chunk size. true_labels: true classes of a targeted
            run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.square(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=0.3, max_queries=50,
        ...                           generator=torch.Generator().manual_seed(0))
        >>> bool((r.queries <= 50).all()), r.n_queries == int(r.queries.sum())
        (True, True)
    """
    config = SquareConfig(max_queries=max_queries, p_init=p_init)
    return run_blackbox(
        "square", model, x, y, eps=eps, norm=norm, kernel=_square_kernel(config, norm), config=config,
        needs="scores", targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
