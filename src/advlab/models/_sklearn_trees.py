"""Decision trees and forests as torch modules, with scikit-learn's decision rule bit for bit.

A node ``m`` sends an input left iff ``float32(x[feature[m]]) <= threshold[m]`` (the float32 value compared
with the float64 threshold, as scikit-learn does after casting ``X`` to float32), else right. Node arrays
follow scikit-learn's ``tree_`` layout: node 0 is the root, children have larger ids than their parent, and
at a leaf ``feature = -2`` (scikit-learn's ``TREE_UNDEFINED``), ``threshold = -2.0`` and ``left = right = -1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import torch
from torch import Tensor, nn

from advlab._validate import check_int
from advlab.models._sklearn_modules import PROB_FLOOR, FlatModel

M = TypeVar("M", bound=nn.Module)

LEAF = -1  # children of a leaf (scikit-learn's TREE_LEAF)
UNDEFINED = -2  # feature of a leaf (scikit-learn's TREE_UNDEFINED)


def _walk(xs: Tensor, node: Tensor, feature: Tensor, threshold: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """The leaf reached from ``node`` (``(N,)`` or ``(N, T)`` global node ids) by every row of ``xs`` (``(N, D)``
    float64 holding float32 values): one vectorised step per tree level."""
    if node.numel() == 0:
        return node
    for _ in range(len(left) + 1):
        internal = left[node] >= 0
        if not bool(internal.any()):
            return node
        f = feature[node].clamp_min(0)
        value = xs.gather(1, f.reshape(len(xs), -1)).reshape(node.shape)
        step = torch.where(value <= threshold[node], left[node], right[node])
        node = torch.where(internal, step, node)
    raise ValueError("the tree's node arrays hold a cycle (a child that leads back to an ancestor); the tree is "
                     "damaged; rebuild it with from_sklearn")


def _as_float32(flat: Tensor) -> Tensor:
    """Inputs as scikit-learn's trees see them: rounded to float32, then compared in float64."""
    return flat.detach().to(torch.float32).to(torch.float64)


class TreeModel(FlatModel):
    """A decision tree (``DecisionTreeClassifier``): scores are the log of the leaf's class probabilities.

    Scores are ``log(max(p, 1e-6))`` of the class fractions at the leaf an input reaches (log-probabilities:
    attacks refuse probabilities as logits); their argmax is ``predict`` and the input gradient is zero.

    Buffers (see the module docstring for the layout): ``feature (M,)`` long (``-2`` at leaves),
    ``threshold (M,)`` float64 (``-2.0`` at leaves), ``left (M,)``, ``right (M,)`` long (``-1`` at leaves),
    ``value (M, K)`` float64 class probabilities of the training examples at each node.

    Args:
        in_features: ``D``.
        num_classes: ``K >= 2``.
        n_nodes: ``M >= 1``; a new module is a single leaf (every node a leaf) until its buffers are loaded.

    Example:
        >>> import torch
        >>> t = TreeModel(2, 2, n_nodes=3)
        >>> t.feature[0], t.threshold[0], t.left[0], t.right[0] = 1, 0.5, 1, 2
        >>> _ = t.value.copy_(torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]))
        >>> t.apply(torch.tensor([[0.0, 0.2], [0.0, 0.9]])).tolist()
        [1, 2]
        >>> t(torch.tensor([[0.0, 0.9]])).argmax(1).tolist()
        [1]
    """

    kind = "tree"
    feature: Tensor
    threshold: Tensor
    left: Tensor
    right: Tensor
    value: Tensor

    def __init__(self, in_features: int, num_classes: int, n_nodes: int) -> None:
        super().__init__(in_features, num_classes)
        m = self.n_nodes = check_int("n_nodes", n_nodes)
        self.register_buffer("feature", torch.full((m,), UNDEFINED, dtype=torch.long))
        self.register_buffer("threshold", torch.full((m,), float(UNDEFINED), dtype=torch.float64))
        self.register_buffer("left", torch.full((m,), LEAF, dtype=torch.long))
        self.register_buffer("right", torch.full((m,), LEAF, dtype=torch.long))
        self.register_buffer("value", torch.zeros(m, self.num_classes, dtype=torch.float64))

    def _leaves(self, flat: Tensor) -> Tensor:
        start = torch.zeros(len(flat), dtype=torch.long, device=self.left.device)
        return _walk(_as_float32(flat), start, self.feature, self.threshold, self.left, self.right)

    @overload
    def apply(self, x: Tensor) -> Tensor: ...

    @overload
    def apply(self: M, x: Callable[[nn.Module], None]) -> M: ...

    def apply(self, x: Any) -> Any:
        """``(N,)`` the id of the leaf each input reaches (``DecisionTreeClassifier.apply``).

        Given a function instead of inputs, it is ``nn.Module.apply`` (``fn`` applied to every submodule)."""
        if callable(x) and not isinstance(x, Tensor):
            return super().apply(x)
        return self._leaves(self.flatten(x))

    def predict_proba(self, x: Tensor) -> Tensor:
        """``(N, K)`` float64 class probabilities of the leaves (``predict_proba``)."""
        return self.value[self.apply(x)]

    def forward(self, x: Tensor) -> Tensor:
        flat = self.flatten(x)
        scores = self.value[self._leaves(flat)].clamp_min(PROB_FLOOR).log().to(x.dtype)
        return self.connect(scores, flat)

    def leaf_boxes(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every leaf with the box of inputs that reach it: ``(leaf_ids (L,), lower (L, D), upper (L, D))``.

        An input reaches leaf ``l`` iff ``lower[l, f] < x_f <= upper[l, f]`` for every feature ``f`` (strict
        lower: a node sends ``x`` right iff ``x_f > threshold``), with ``x_f`` rounded to float32 as in
        :meth:`apply`; unbounded sides are ``-inf``/``+inf``. Bounds are float64 (the thresholds).
        """
        m, d = self.n_nodes, self.in_features
        dev = self.threshold.device
        lower = torch.full((m, d), -torch.inf, dtype=torch.float64, device=dev)
        upper = torch.full((m, d), torch.inf, dtype=torch.float64, device=dev)
        frontier = torch.zeros(1, dtype=torch.long, device=dev)
        for _ in range(m):
            frontier = frontier[self.left[frontier] >= 0]
            if frontier.numel() == 0:
                break
            f, t = self.feature[frontier], self.threshold[frontier]
            lo, hi = self.left[frontier], self.right[frontier]
            lower[lo], upper[lo] = lower[frontier], upper[frontier]
            lower[hi], upper[hi] = lower[frontier], upper[frontier]
            upper[lo, f] = torch.minimum(upper[frontier, f], t)
            lower[hi, f] = torch.maximum(lower[frontier, f], t)
            frontier = torch.cat([lo, hi])
        leaves = (self.left < 0).nonzero().squeeze(1)
        return leaves, lower[leaves], upper[leaves]


class ForestModel(FlatModel):
    """A forest (``RandomForestClassifier``, ``ExtraTreesClassifier``): the log of the mean of its trees'
    leaf probabilities (scikit-learn's ``predict_proba``), floored at ``1e-6``; the input gradient is zero.

    All trees are walked together, one vectorised step per level of the deepest tree.

    Args:
        in_features: ``D``.
        num_classes: ``K >= 2``.
        trees: the trees, as :class:`TreeModel` objects or as their node counts (new single-leaf trees).

    Attributes:
        trees: ``nn.ModuleList`` of :class:`TreeModel`.

    Example:
        >>> import torch
        >>> f = ForestModel(2, 3, [1, 1])
        >>> f(torch.rand(4, 2)).shape
        torch.Size([4, 3])
    """

    kind = "forest"

    def __init__(self, in_features: int, num_classes: int, trees: Sequence[int | TreeModel]) -> None:
        super().__init__(in_features, num_classes)
        if not isinstance(trees, (list, tuple)) or not trees:
            raise ValueError(f"trees must be a non-empty list of TreeModel or node counts, got {trees!r}")
        made = []
        for i, tree in enumerate(trees):
            if isinstance(tree, TreeModel):
                if (tree.in_features, tree.num_classes) != (self.in_features, self.num_classes):
                    raise ValueError(f"trees[{i}] has {tree.in_features} features and {tree.num_classes} classes, "
                                     f"the forest {self.in_features} and {self.num_classes}")
                made.append(tree)
            else:
                made.append(TreeModel(self.in_features, self.num_classes, check_int(f"trees[{i}]", tree)))
        self.trees = nn.ModuleList(made)

    def _stacked(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The trees' node arrays end to end (children shifted to global ids), the roots and the value rows."""
        trees: list[TreeModel] = list(self.trees)  # type: ignore[arg-type]
        sizes = torch.tensor([t.n_nodes for t in trees], device=trees[0].left.device)
        roots = torch.cumsum(sizes, 0) - sizes
        shift = torch.repeat_interleave(roots, sizes)
        left = torch.cat([t.left for t in trees])
        right = torch.cat([t.right for t in trees])
        left = torch.where(left >= 0, left + shift, left)
        right = torch.where(right >= 0, right + shift, right)
        feature = torch.cat([t.feature for t in trees])
        threshold = torch.cat([t.threshold for t in trees])
        value = torch.cat([t.value for t in trees])
        return roots, feature, threshold, left, right, value, shift

    def _leaves(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        roots, feature, threshold, left, right, value, shift = self._stacked()
        start = roots.unsqueeze(0).expand(len(flat), -1)
        return _walk(_as_float32(flat), start, feature, threshold, left, right), value, shift

    @overload
    def apply(self, x: Tensor) -> Tensor: ...

    @overload
    def apply(self: M, x: Callable[[nn.Module], None]) -> M: ...

    def apply(self, x: Any) -> Any:
        """``(N, T)`` the leaf each input reaches in each tree (ids within the tree, as ``forest.apply``).

        Given a function instead of inputs, it is ``nn.Module.apply`` (``fn`` applied to every submodule)."""
        if callable(x) and not isinstance(x, Tensor):
            return super().apply(x)
        node, _, shift = self._leaves(self.flatten(x))
        return node - shift[node]

    def predict_proba(self, x: Tensor) -> Tensor:
        """``(N, K)`` float64: the mean of the trees' leaf probabilities (``predict_proba``)."""
        node, value, _ = self._leaves(self.flatten(x))
        return value[node].mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        flat = self.flatten(x)
        node, value, _ = self._leaves(flat)
        scores = value[node].mean(dim=1).clamp_min(PROB_FLOOR).log().to(x.dtype)
        return self.connect(scores, flat)
