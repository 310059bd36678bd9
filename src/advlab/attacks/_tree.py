"""Attacks on decision trees: the exact minimal change (``tree``) and Papernot's path search (``tree_papernot``).

References: Kantchelian, Tygar & Joseph, "Evasion and Hardening of Tree Ensemble Classifiers", ICML 2016 (the
exact minimum-norm evasion, solved there as a MILP for ensembles; for one tree, enumerating its leaves is
exact); Papernot, McDaniel & Goodfellow, "Transferability in Machine Learning: from Phenomena to Black-Box
Attacks using Adversarial Samples", arXiv:1605.07277, 2016 (the decision-tree attack of its section 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab._validate import check_float
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult

# The leaf search builds (examples, leaves, constrained features) tensors of at most this many elements.
_ELEMENTS = 1 << 23
# Round-off of ``x + (z - x)`` moves a coordinate by at most an ulp or two: this many corrections suffice.
_LANDING_TRIES = 4


@dataclass(frozen=True)
class TreeConfig:
    """Hyper-parameters of the exact tree attack: none (the norm it minimises is the threat model's)."""


@dataclass(frozen=True)
class TreePapernotConfig:
    """Hyper-parameters of Papernot's tree attack: how far past a threshold a changed feature is set."""

    offset: float = 0.001

    def __post_init__(self) -> None:
        check_float("offset", self.offset)


def sklearn_net(model: Any, kinds: tuple[str, ...], attack: str, hint: str) -> Any:
    """The scikit-learn wrapper inside ``model`` (a ``Classifier``'s ``net``, or the module itself) when its
    ``kind`` is one of ``kinds``; else ``TypeError`` naming what the attack needs and ``hint``.

    The wrappers of :func:`advlab.models.from_sklearn` work on raw inputs: a ``Classifier`` that normalises
    its inputs in front of one is refused (``ValueError``), since the model's thresholds, training points or
    weights would then be in other units than the attack's."""
    net = getattr(model, "net", model)
    kind = getattr(net, "kind", None)
    if not isinstance(net, nn.Module) or kind not in kinds:
        what = f"a {kind!r} model" if isinstance(kind, str) else f"a {type(net).__name__}"
        raise TypeError(
            f"{attack} attacks {' or '.join(repr(k) for k in kinds)} models (advlab.models.from_sklearn), "
            f"got {what}; {hint}"
        )
    if getattr(model, "mean", None) is not None or getattr(model, "std", None) is not None:
        raise ValueError(
            f"{attack} needs the scikit-learn model on raw inputs, but this Classifier normalises them first; "
            f"build it with advlab.models.from_sklearn(estimator, bounds=...) (no mean/std)"
        )
    return net


def _tree_net(model: Any, attack: str) -> Any:
    hint = (
        "for a random forest attack each of its trees with tree_papernot, or transfer an attack from a "
        "differentiable surrogate" if getattr(getattr(model, "net", model), "kind", None) == "forest"
        else "for other models use a gradient attack (pgd, cw) or transfer"
    )
    return sklearn_net(model, ("tree",), attack, hint)


def float_interval(
    lower: Tensor, upper: Tensor, dtype: torch.dtype, bounds: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """The closed interval ``[a, b]`` of the float32 values ``v`` with ``lower < v <= upper``, intersected with
    ``bounds`` and returned in ``dtype``; empty where ``a > b``.

    That is scikit-learn's rule: a tree rounds ``x_f`` to float32 and sends it left iff it is ``<= threshold``
    (float64), so ``a`` is the first float32 value above ``lower`` and ``b`` the last one not above ``upper``."""
    single, wide = torch.float32, torch.float64
    a = lower.to(single)
    a = torch.where(a.to(wide) <= lower, torch.nextafter(a, torch.full_like(a, torch.inf)), a)
    b = upper.to(single)
    b = torch.where(b.to(wide) > upper, torch.nextafter(b, torch.full_like(b, -torch.inf)), b)
    lo, hi = (torch.tensor(v, dtype=single, device=lower.device) for v in bounds)
    lo = torch.where(lo.to(wide) < bounds[0], torch.nextafter(lo, torch.full_like(lo, torch.inf)), lo)
    hi = torch.where(hi.to(wide) > bounds[1], torch.nextafter(hi, torch.full_like(hi, -torch.inf)), hi)
    return torch.maximum(a, lo).to(dtype), torch.minimum(b, hi).to(dtype)


def as_tree_sees(x: Tensor) -> Tensor:
    """``x`` rounded to float32 (what a tree compares with its thresholds), in ``x``'s dtype."""
    return x.to(torch.float32).to(x.dtype)


def inside(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Where a tree sees ``x`` within ``[a, b]`` (bounds of :func:`float_interval`)."""
    seen = as_tree_sees(x)
    return (seen >= a) & (seen <= b)


def land(x: Tensor, z: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``z`` (float32 values within ``[a, b]``) nudged by a float32 ulp where needed so that the engine's
    ``x + (z - x)``, rounded as the tree rounds it, still lies within ``[a, b]``."""
    for _ in range(_LANDING_TRIES):
        seen = as_tree_sees(x + (z - x))
        low, high = seen < a, seen > b
        if not bool((low | high).any()):
            break
        z32 = z.to(torch.float32)
        z32 = torch.where(low, torch.nextafter(z32, torch.full_like(z32, torch.inf)), z32)
        z32 = torch.where(high, torch.nextafter(z32, torch.full_like(z32, -torch.inf)), z32)
        z = z32.to(z.dtype)
    return z


def _leaf_classes(net: Any, leaves: Tensor) -> Tensor:
    value: Tensor = net.value
    return value[leaves].argmax(dim=1)


def _distance(gap: Tensor, norm: str) -> Tensor:
    """Norm over the last dimension of the non-negative per-feature distances ``gap``."""
    if norm == "l0":
        return (gap > 0).sum(dim=-1).to(gap.dtype)
    if norm == "linf":
        return gap.amax(dim=-1) if gap.shape[-1] else gap.sum(dim=-1)
    if norm == "l1":
        return gap.sum(dim=-1)
    return gap.square().sum(dim=-1).sqrt()


def _tree_kernel(norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        net = _tree_net(ctx.model, "tree")
        n, dtype = x.shape[0], x.dtype
        flat = x.reshape(n, -1)
        leaves, lower, upper = (t.to(x.device) for t in net.leaf_boxes())
        a, b = float_interval(lower.double(), upper.double(), dtype, ctx.bounds)
        classes = _leaf_classes(net, leaves)
        feasible = (a <= b).all(dim=1)
        # Only the features a leaf constrains more tightly than the bounds can cost anything (at most the
        # tree's depth of them): gather those, padding with unconstrained slots (distance 0, z = x).
        lo, hi = ctx.bounds
        tight = (a > lo) | (b < hi)
        p = max(int(tight.sum(dim=1).max()), 1) if tight.numel() else 1
        cols = tight.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :p]  # (L, p)
        used = tight.gather(1, cols)
        a_s = a.gather(1, cols).masked_fill(~used, -torch.inf)
        b_s = b.gather(1, cols).masked_fill(~used, torch.inf)
        n_leaves = leaves.shape[0]
        best = torch.zeros(n, dtype=torch.long, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        rows = max(1, _ELEMENTS // max(n_leaves * p, 1))
        for s in range(0, n, rows):  # chunks of examples, to bound memory
            xs = flat[s : s + rows][:, cols.reshape(-1)].reshape(-1, n_leaves, p)
            gap = ((a_s - xs).clamp(min=0) + (xs - b_s).clamp(min=0)).masked_fill(inside(xs, a_s, b_s), 0.0)
            dist = _distance(gap, norm)
            ys = y[s : s + rows, None]
            allowed = feasible & ((classes == ys) if ctx.targeted else (classes != ys))
            dist = dist.masked_fill(~allowed, torch.inf)
            if norm == "l0":  # among the leaves of fewest changed features, the smallest L2 change
                l2 = _distance(gap, "l2").masked_fill(dist > dist.amin(dim=1, keepdim=True), torch.inf)
                l2 = l2.masked_fill(~allowed, torch.inf)
                best[s : s + rows] = l2.argmin(dim=1)
            else:
                best[s : s + rows] = dist.argmin(dim=1)
            found[s : s + rows] = allowed.any(dim=1)
        idx, lo_b, hi_b = cols[best], a_s[best], b_s[best]  # (n, p)
        xg = flat.gather(1, idx)
        zg = torch.where(inside(xg, lo_b, hi_b), xg, torch.minimum(torch.maximum(xg, lo_b), hi_b))
        zg = land(xg, zg, lo_b, hi_b)
        z = flat.clone().scatter_(1, idx, zg)
        return torch.where(found[:, None], z, flat).reshape(x.shape)

    return kernel


@register_attack("tree", norms=("l0", "linf", "l2", "l1"), config=TreeConfig, min_norm=True,
                 models=("tree",))
def tree(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l0",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Exact minimum-norm evasion of one decision tree (Kantchelian et al., ICML 2016), by enumerating its leaves.

    The inputs a tree assigns to a leaf form a box ``lower < x_f <= upper`` (scikit-learn's rule: left iff
    ``x_f <= threshold``), so the inputs of a class are the union of the boxes of its leaves. For every leaf
    of another class (untargeted) or of the target class (targeted), the nearest point of its box within
    the bounds is ``x`` clamped into it feature by feature, at a distance that is the norm of the per-feature
    distances to the box's intervals (L0: how many features lie outside). The attack returns the nearest
    over all such leaves: the exact minimum of the chosen norm, up to the float grid. A strict lower bound
    is met by the first representable value above it (``nextafter``), so the tree really goes right. With
    ``norm="l0"``, ties between leaves needing as many features are broken by the smaller L2 change.

    Kantchelian et al. solve a mixed-integer program for tree *ensembles*; for a single tree the leaf
    enumeration is exact and costs ``O(examples x leaves x depth)`` (vectorised, in chunks of bounded
    memory). A forest is refused: attack each of its trees with ``tree_papernot``, or transfer an attack
    from a differentiable surrogate.

    Threat model: minimum-norm; the attack runs once, minimising ``norm`` without a budget, and every budget in
    ``eps`` is then filled by projecting onto its ball (for ``l0``: the ``eps`` largest changes are kept,
    ``eps`` counting input features). Below the minimum no point of the ball is adversarial, so the result
    fails there, as it must.

    Args:
        model: a decision tree from :func:`advlab.models.from_sklearn` (kind ``"tree"``), or its inner module.
        x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)`` true classes, or targets when ``targeted``.
        eps: budget(s) in raw input units (numbers of features for ``l0``). norm: ``l0`` (default), ``linf``,
            ``l2`` or ``l1``, the norm minimised. targeted: reach the class ``y`` (a target no leaf predicts
            fails). generator: unused (deterministic). batch_size: chunk size. true_labels: true classes of a
            targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> model = advlab.models.from_sklearn(DecisionTreeClassifier(random_state=0).fit(x.flatten(1), y),
        ...                                    in_shape=(1, 8, 8))
        >>> r = advlab.attacks.tree(model, x[:20], y[:20], eps=64)
        >>> bool(r.success.all()), int(r.distances.max()) <= 8
        (True, True)
    """
    config = TreeConfig()
    return run_attack(
        "tree", model, x, y, eps=eps, norm=norm, kernel=_tree_kernel(norm), config=config, targeted=targeted,
        generator=generator, batch_size=batch_size, true_labels=true_labels,
    )


# ---------------------------------------------------------------- Papernot et al.'s path search


def papernot_targets(net: Any) -> tuple[np.ndarray, np.ndarray]:
    """For every node ``l`` (used at leaves) and class ``c``, the leaf Papernot's search moves an input of leaf
    ``l`` to: up from ``l``, the first ancestor whose *other* subtree holds a leaf of another class than ``c``
    (``avoid[l, c]``) or of class ``c`` (``reach[l, c]``), and in that subtree the shallowest such leaf
    (fewest thresholds to cross; the left one on ties). ``-1`` where there is none. Both ``(M, K)``."""
    left = net.left.cpu().numpy()
    right = net.right.cpu().numpy()
    value = net.value.cpu().numpy()
    m, k = value.shape
    is_leaf = left < 0
    cls = value.argmax(axis=1)
    parent = np.full(m, -1)
    parent[left[~is_leaf]] = np.flatnonzero(~is_leaf)
    parent[right[~is_leaf]] = np.flatnonzero(~is_leaf)
    order = [0]  # breadth-first from the root, then processed children-first
    for node in order:
        if not is_leaf[node]:
            order += [int(left[node]), int(right[node])]
    depth = np.full((m, k), np.inf)  # depth below the node of its shallowest leaf of each class
    leaf = np.full((m, k), -1)
    for node in reversed(order):
        if is_leaf[node]:
            depth[node, cls[node]], leaf[node, cls[node]] = 0, node
            continue
        dl, dr = depth[left[node]] + 1, depth[right[node]] + 1
        take_left = dl <= dr
        depth[node] = np.where(take_left, dl, dr)
        leaf[node] = np.where(take_left, leaf[left[node]], leaf[right[node]])
    # The shallowest leaf of any class but c: the best class, or the second best where the best is c.
    rank = np.argsort(depth, axis=1, kind="stable")
    first, second = rank[:, 0], rank[:, 1] if k > 1 else rank[:, 0]
    other = np.where(np.arange(k)[None, :] == first[:, None], second[:, None], first[:, None])  # (M, K) classes
    other_leaf = np.take_along_axis(leaf, other, axis=1)
    other_leaf[np.take_along_axis(depth, other, axis=1) == np.inf] = -1
    avoid, reach = np.full((m, k), -1), np.full((m, k), -1)
    at = np.arange(m)
    for _ in range(m):  # climb all nodes together, at most the tree's depth times
        up = parent[at]
        live = up >= 0
        if not live.any():
            break
        sibling = np.where(left[np.maximum(up, 0)] == at, right[np.maximum(up, 0)], left[np.maximum(up, 0)])
        for table, source in ((avoid, other_leaf), (reach, leaf)):
            fill = live[:, None] & (table < 0) & (source[sibling] >= 0)
            table[fill] = source[sibling][fill]
        at = np.where(live, up, at)
    return avoid, reach


def _papernot_kernel(config: TreePapernotConfig) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        net = _tree_net(ctx.model, "tree_papernot")
        if "papernot" not in ctx.memo:  # once per chunk; the tables do not depend on x
            leaves, lower, upper = net.leaf_boxes()
            avoid, reach = papernot_targets(net)
            row = torch.full((int(net.value.shape[0]),), -1, dtype=torch.long)
            row[leaves.cpu()] = torch.arange(leaves.shape[0])
            ctx.memo["papernot"] = (torch.as_tensor(reach if ctx.targeted else avoid), row, lower, upper)
        table, row, lower, upper = ctx.memo["papernot"]
        flat = x.reshape(x.shape[0], -1)
        at = net.apply(x).cpu()
        cls = net.value.argmax(dim=1).cpu()
        done = (cls[at] == y.cpu()) if ctx.targeted else (cls[at] != y.cpu())
        goal = torch.where(done, -1, table[at, y.cpu()])
        move = goal >= 0
        if not bool(move.any()):
            return x
        r = row[goal.clamp(min=0)]
        lo_d = lower[r].to(x.device, torch.float64)
        hi_d = upper[r].to(x.device, torch.float64)
        a, b = float_interval(lo_d, hi_d, x.dtype, ctx.bounds)
        off = config.offset
        # Only features on the wrong side of a threshold move: just past it, by ``offset``, within the box.
        seen = as_tree_sees(flat)
        z = torch.where(seen < a, (lo_d + off).to(x.dtype), torch.where(seen > b, (hi_d - off).to(x.dtype), flat))
        z = torch.where(inside(flat, a, b), flat, torch.minimum(torch.maximum(z, a), b).to(torch.float32).to(x.dtype))
        z = land(flat, z, a, b)
        return torch.where(move.to(x.device)[:, None], z, flat).reshape(x.shape)

    return kernel


@register_attack("tree_papernot", norms=("l0", "linf", "l2", "l1"), config=TreePapernotConfig,
                 min_norm=True, models=("tree",))
def tree_papernot(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l0",
    offset: float = 0.001,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Papernot et al.'s decision-tree attack (2016): follow the nearest branch that leads to another class.

    From the leaf of ``x``, the search climbs the tree to the nearest ancestor whose other subtree holds a
    leaf of another class (targeted: of the target class) and picks there the shallowest such leaf; the
    features tested on the way down to it that ``x`` does not yet satisfy are set just past their threshold,
    by ``offset`` (into the leaf's box, and within the bounds), so that ``x`` follows that path. Few features
    change (at most the path's length), by arbitrary amounts: an L0 attack. It is a fast heuristic, not a
    minimum: the exact ``tree`` attack finds changes at most as large in every norm it minimises.

    The leaf each leaf leads to (per class) is computed once per call from the tree alone; applying it to
    the batch is vectorised.

    Threat model: the change is made once, without a budget, and every budget in ``eps`` is then filled by
    projecting onto its ball (``l0``: the ``eps`` largest changes are kept, ``eps`` counting input features).

    Args:
        model: a decision tree from :func:`advlab.models.from_sklearn` (kind ``"tree"``), or its inner module.
        x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)`` true classes, or targets when ``targeted``.
        eps: budget(s) in raw input units (numbers of features for ``l0``). norm: ``l0`` (default), ``linf``,
            ``l2`` or ``l1``. offset: how far past a threshold a changed feature is set, default 0.001 (the
            first representable value past it when the leaf's interval is narrower). targeted: reach ``y``.
            generator: unused (deterministic). batch_size: chunk size. true_labels: true classes of a
            targeted run (checked to differ from the targets).

    Example:
        >>> import torch, advlab
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> model = advlab.models.from_sklearn(DecisionTreeClassifier(random_state=0).fit(x.flatten(1), y),
        ...                                    in_shape=(1, 8, 8))
        >>> r = advlab.attacks.tree_papernot(model, x[:20], y[:20], eps=64)
        >>> bool(r.success.all())
        True
    """
    config = TreePapernotConfig(offset=offset)
    return run_attack(
        "tree_papernot", model, x, y, eps=eps, norm=norm, kernel=_papernot_kernel(config), config=config,
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
