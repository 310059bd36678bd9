"""A white-box attack on k-nearest-neighbour classifiers: walk towards a nearby group of another class.

The method is a heuristic of this library (there is no standard one; for 1-NN the exact minimum is a
quadratic program, see Wang, Jha & Chaudhuri, "Analyzing the Robustness of Nearest Neighbors to Adversarial
Examples", ICML 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_int
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.attacks._tree import sklearn_net
from advlab.threat import LpBall, is_adversarial, lp_norm

# Distance matrices (rows x training points) are built in chunks of at most this many elements.
_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class KNNConfig:
    """Hyper-parameters of the kNN attack: rival classes tried, search steps, refinements."""

    candidates: int = 3
    steps: int = 12
    refine: int = 2

    def __post_init__(self) -> None:
        check_int("candidates", self.candidates)
        check_int("steps", self.steps)
        check_int("refine", self.refine, minimum=0)


def _class_anchors(train_x: Tensor, train_y: Tensor, points: Tensor, classes: Tensor, m: int) -> Tensor:
    """For each row of ``points`` ``(R, D)`` and its class ``classes`` ``(R,)``, the mean of the ``m`` training
    points of that class nearest to it ``(R, D)`` (Euclidean, the kNN model's metric)."""
    out = torch.empty_like(points)
    rows = max(1, _ELEMENTS // max(train_x.shape[0], 1))
    for s in range(0, points.shape[0], rows):
        d = torch.cdist(points[s : s + rows].to(train_x.dtype), train_x)
        d = d.masked_fill(train_y[None, :] != classes[s : s + rows, None], torch.inf)
        idx = d.topk(m, dim=1, largest=False).indices
        out[s : s + rows] = train_x[idx].mean(dim=1).to(points.dtype)
    return out


def _rival_classes(train_x: Tensor, train_y: Tensor, x: Tensor, avoid: Tensor, k: int, m: int,
                   num_classes: int) -> Tensor:
    """The ``k`` classes other than ``avoid`` whose ``m``-th nearest training point is nearest to ``x``
    ``(N, k)``, nearest first."""
    score = torch.empty(x.shape[0], num_classes, dtype=train_x.dtype, device=x.device)
    rows = max(1, _ELEMENTS // max(train_x.shape[0], 1))
    for s in range(0, x.shape[0], rows):
        d = torch.cdist(x[s : s + rows].to(train_x.dtype), train_x)
        for c in range(num_classes):
            dc = d.masked_fill(train_y[None, :] != c, torch.inf)
            count = min(m, dc.shape[1])
            score[s : s + rows, c] = dc.topk(count, dim=1, largest=False).values[:, -1] if count else torch.inf
    score.scatter_(1, avoid[:, None], torch.inf)
    return score.topk(k, dim=1, largest=False).indices


def _knn_kernel(config: KNNConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        net = sklearn_net(ctx.model, ("knn",), "knn", "for other models use a gradient attack (pgd, cw) or transfer")
        train_x: Tensor = net.train_x
        train_y: Tensor = net.train_y
        k_model = int(net.k)
        m = k_model // 2 + 1  # a strict majority of the vote
        n, shape = x.shape[0], x.shape[1:]
        flat = x.reshape(n, -1)
        num_classes = ctx.num_classes
        if ctx.targeted:
            rivals = y[:, None]
        else:
            c = min(config.candidates, num_classes - 1)
            rivals = _rival_classes(train_x, train_y, flat, y, c, m, num_classes)
        c = rivals.shape[1]
        # One row per (candidate class, example), class-major, searched together.
        xs = flat.repeat(c, 1)
        ys = y.repeat(c)
        cls = rivals.T.reshape(-1)
        best = xs.clone()
        best_r = torch.full((xs.shape[0],), torch.inf, dtype=x.dtype, device=x.device)
        start = xs
        for _ in range(config.refine + 1):
            anchor = ctx.clip(_class_anchors(train_x, train_y, start, cls, m))
            delta = anchor - xs
            top = lp_norm(delta, norm)
            lo = torch.zeros_like(top)
            hi = top.clone()

            def point(r: Tensor, delta: Tensor = delta) -> Tensor:
                return xs + LpBall(norm, r).project(delta)

            ok = is_adversarial(ctx.logits(point(hi).reshape(-1, *shape)), ys, ctx.targeted)
            hi = torch.where(ok, hi, torch.inf)
            for _ in range(config.steps):  # bisection on the radius, where the anchor is adversarial
                live = ok & (hi - lo > 0)
                if not bool(live.any()):
                    break
                mid = torch.where(live, (lo + hi) / 2, hi)
                adv = is_adversarial(ctx.logits(point(torch.where(ok, mid, 0.0)).reshape(-1, *shape)), ys,
                                     ctx.targeted)
                hi = torch.where(live & adv, mid, hi)
                lo = torch.where(live & ~adv, mid, lo)
            better = ok & (hi < best_r)
            found = point(torch.where(ok, hi, 0.0))
            best = torch.where(better[:, None], found, best)
            best_r = torch.where(better, hi, best_r)
            start = torch.where(ok[:, None], found, start)  # the next anchor: the group nearest the boundary
        # Each example keeps its nearest adversarial point over the candidate classes.
        choice = best_r.reshape(c, n).argmin(dim=0)
        return best.reshape(c, n, -1)[choice, torch.arange(n, device=x.device)].reshape(x.shape)

    return kernel


@register_attack("knn", norms=("l2", "linf", "l1"), config=KNNConfig, min_norm=True, models=("knn",))
def knn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l2",
    candidates: int = 3,
    steps: int = 12,
    refine: int = 2,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """White-box attack on k-nearest neighbours: walk towards a nearby group of training points of another class.

    A kNN vote changes only when enough training points of another class become the nearest, so the
    attack walks towards such a group. For each rival class ``c`` (untargeted: the ``candidates`` classes
    whose ``(k//2 + 1)``-th nearest training point is nearest to ``x``; targeted: the target) it takes the
    *anchor* ``a``, the mean of the ``k//2 + 1`` training points of class ``c`` nearest to ``x`` (a strict
    majority of the vote if they become the nearest), and follows the path ``x + P_r(a - x)``, where
    ``P_r`` projects onto the ``norm`` ball of radius ``r`` (L2: the straight line to ``a``; L∞: each feature
    moves towards ``a`` by at most ``r``). A bisection on ``r`` (``steps`` model queries) finds the smallest
    radius at which the model's answer is adversarial. Then, ``refine`` times, the anchor is recomputed from
    the training points nearest to the point found (the group that actually wins there) and the search is
    repeated from ``x``, keeping the smallest radius. Each example keeps its best class. Batched over
    examples and classes; the model is queried only through its forward pass (counted in ``n_forward``).

    What it optimises: the distance to the first adversarial point along a few such paths. It is a
    heuristic, not the minimum: the true nearest adversarial input may lie off these paths, and an
    example whose anchors are all still voted for its own class is not broken.

    Threat model: minimum-norm; the search runs once without a budget, and every budget in ``eps`` is then
    filled by projecting the perturbation onto its ball, which keeps it on the same path (the point of
    radius ``eps``), so a budget below the radius found fails.

    Args:
        model: a kNN classifier from :func:`advlab.models.from_sklearn` (kind ``"knn"``), or its inner module.
        x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)`` true classes, or targets when ``targeted``.
        eps: budget(s) in raw input units. norm: ``l2`` (default), ``linf`` or ``l1``.
        candidates: rival classes searched per example when untargeted, default 3 (capped at ``K - 1``).
        steps: bisection steps per search, default 12. refine: searches after the first, each from an anchor
            recomputed at the point found, default 2. targeted: reach the class ``y``. generator: unused
            (deterministic). batch_size: chunk size. true_labels: true classes of a targeted run (checked to
            differ from the targets).

    Example:
        >>> import torch, advlab
        >>> from sklearn.neighbors import KNeighborsClassifier
        >>> x, y = advlab.load_dataset("digits", "train")
        >>> model = advlab.models.from_sklearn(KNeighborsClassifier(5).fit(x.flatten(1), y), in_shape=(1, 8, 8))
        >>> xt, yt = advlab.load_dataset("digits", "test")
        >>> r = advlab.attacks.knn(model, xt[:20], yt[:20], eps=[1.0, 4.0])
        >>> r.success.float().mean(dim=1).tolist()[1] >= 0.9
        True
    """
    config = KNNConfig(candidates=candidates, steps=steps, refine=refine)
    return run_attack(
        "knn", model, x, y, eps=eps, norm=norm, kernel=_knn_kernel(config, norm), config=config, targeted=targeted,
        generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
