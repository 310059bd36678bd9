"""Torch modules that compute what fitted scikit-learn classifiers compute: linear models, RBF SVMs, kNN.

Every module holds its numbers as buffers (``state_dict()`` goes to safetensors, nothing is pickled), takes
``(N, *in_shape)`` float inputs, flattens them to ``(N, D)`` and returns ``(N, K)`` float scores whose argmax
is the estimator's ``predict``. :func:`advlab.models.from_sklearn` fills them from a fitted estimator; the
trees live in :mod:`advlab.models._sklearn_trees`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advlab._validate import check_int

# The floor of probabilities before their log is taken (log(1e-6) = -13.8): finite log-probability scores.
PROB_FLOOR = 1e-6


class FlatModel(nn.Module):
    """Base of the scikit-learn modules: the sizes, and inputs flattened to ``(N, in_features)``."""

    kind: str = ""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        # (C, H, W) of one input when known (set by the registry), for error messages only.
        self.in_shape: tuple[int, ...] | None = None

    def flatten(self, x: Tensor) -> Tensor:
        """``x`` as ``(N, in_features)``; ``ValueError``/``TypeError`` for anything else."""
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        flat = x.flatten(1) if x.ndim >= 2 else None
        if flat is None or flat.shape[1] != self.in_features:
            shape = f" (in_shape {self.in_shape})" if self.in_shape is not None else ""
            got = flat.shape[1] if flat is not None else "no batch dimension"
            raise ValueError(
                f"model takes {self.in_features} features{shape}, got {got} (input shape {tuple(x.shape)}); "
                f"pass a batch (N, ...) of {self.in_features} values per example"
            )
        return flat

    @staticmethod
    def connect(scores: Tensor, flat: Tensor) -> Tensor:
        """``scores`` joined to the autograd graph of ``flat`` with a zero gradient.

        Trees, forests and kNN are piecewise constant: their input gradient is zero almost everywhere. This
        makes autograd say so (a zero gradient) instead of failing on an output that does not depend on the
        input, so gradient attacks run on them and report their (honest) failure.
        """
        if flat.requires_grad and torch.is_grad_enabled():
            return scores + 0.0 * flat.sum(dim=1, keepdim=True).to(scores.dtype)
        return scores


class LinearModel(FlatModel):
    """A linear classifier: ``scores = x @ weight.T + bias`` (exact, differentiable logits).

    Built by :func:`~advlab.models.from_sklearn` from ``LogisticRegression``, ``LinearSVC``,
    ``SGDClassifier`` and ``RidgeClassifier``. A binary estimator (``coef_`` of shape ``(1, D)``) becomes
    ``K = 2`` with weight rows ``[0, w]`` and bias ``[0, b]``: the argmax is ``predict`` and, for logistic
    regression, the softmax of the scores is ``predict_proba``.

    Args:
        in_features: ``D``, the flattened input size.
        num_classes: ``K >= 2``.

    Shapes: buffers ``weight (K, D)``, ``bias (K,)``; input ``(N, *in_shape)``, output ``(N, K)``.

    Example:
        >>> import torch
        >>> m = LinearModel(4, 3)
        >>> m.weight[1, 0] = 1.0
        >>> m(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])).argmax(1).tolist()
        [1]
    """

    kind = "linear"
    weight: Tensor
    bias: Tensor

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.register_buffer("weight", torch.zeros(self.num_classes, self.in_features))
        self.register_buffer("bias", torch.zeros(self.num_classes))

    def linear_weights(self) -> tuple[Tensor, Tensor]:
        """``(weight (K, D), bias (K,))``: the scores are ``x @ weight.T + bias``."""
        return self.weight, self.bias

    def forward(self, x: Tensor) -> Tensor:
        flat = self.flatten(x)
        dtype = torch.promote_types(flat.dtype, self.weight.dtype)
        out = flat.to(dtype) @ self.weight.to(dtype).T + self.bias.to(dtype)
        return out.to(x.dtype)


class RBFSVM(FlatModel):
    """A kernel SVM with the Gaussian (RBF) kernel, one-vs-one as scikit-learn's ``SVC`` (libsvm).

    Pair ``p = (i, j)``, ``i < j`` (in scikit-learn's order: ``(0,1), (0,2), ..., (K-2,K-1)``) has the decision
    value ``f_p(x) = sum_s a_ps exp(-gamma ||x - sv_s||^2) + intercept_p`` over the support vectors of
    classes ``i`` and ``j``; ``f_p > 0`` is a vote for ``i`` (libsvm's convention, that of
    ``decision_function`` with ``decision_function_shape="ovo"``). The class scores are, for ``K > 2``,
    scikit-learn's one-vs-rest decision function: ``votes + s / (3 (|s| + 1))`` with ``s_c`` the sum of the
    pair values in favour of ``c``: the argmax is ``predict`` with ``break_ties=True``, and ``predict`` (default
    ``break_ties=False``) except on ties in the votes, which ``predict`` gives to the smallest tied class and
    these scores to the more confident one (1 of the 360 digits test images; 17 of 3,000 MNIST test images for
    an SVC fitted on 3,000); the gradient is that of the pairwise decision values. For ``K = 2`` the scores
    are ``[0, decision_function(x)]`` (exact margin).

    Buffers (coefficients in libsvm's pairwise convention, which for ``K = 2`` is the negative of the public
    ``dual_coef_``/``intercept_`` of a binary ``SVC``): ``support_vectors (S, D)``, ``dual_coef (K-1, S)``,
    ``intercept (P,)`` with ``P = K (K - 1) / 2``, ``gamma`` (scalar), ``sv_class (S,)`` (the class of each
    support vector) and ``pairs (P, 2)`` (the classes ``(i, j)`` of each pair).

    Args:
        in_features: ``D``.
        num_classes: ``K >= 2``.
        n_support: support vectors per class (``SVC.n_support_``), or their total when ``sv_class`` will be
            loaded from a checkpoint (then every vector counts as class 0 until it is).

    Example:
        >>> import torch
        >>> m = RBFSVM(2, 3, [1, 1, 1])
        >>> m.decision_pairs(torch.rand(4, 2)).shape
        torch.Size([4, 3])
    """

    kind = "svm-rbf"
    support_vectors: Tensor
    dual_coef: Tensor
    intercept: Tensor
    gamma: Tensor
    sv_class: Tensor
    pairs: Tensor

    def __init__(self, in_features: int, num_classes: int, n_support: int | Sequence[int]) -> None:
        super().__init__(in_features, num_classes)
        k = self.num_classes
        if isinstance(n_support, int) and not isinstance(n_support, bool):
            counts = [check_int("n_support", n_support, minimum=0)] + [0] * (k - 1)
        elif isinstance(n_support, (list, tuple)) and len(n_support) == k:
            counts = [check_int(f"n_support[{i}]", n, minimum=0) for i, n in enumerate(n_support)]
        else:
            raise ValueError(f"n_support must be an int or a list of {k} ints (one per class), got {n_support!r}")
        self.n_support = counts
        s = sum(counts)
        self.register_buffer("support_vectors", torch.zeros(s, self.in_features))
        self.register_buffer("dual_coef", torch.zeros(k - 1, s))
        self.register_buffer("intercept", torch.zeros(k * (k - 1) // 2))
        self.register_buffer("gamma", torch.tensor(1.0))
        self.register_buffer("sv_class", torch.repeat_interleave(torch.arange(k), torch.tensor(counts)))
        self.register_buffer("pairs", torch.combinations(torch.arange(k), r=2))

    def pair_coefficients(self) -> Tensor:
        """``(P, S)``: the coefficient of support vector ``s`` in pair ``p`` (zero outside its two classes).

        For pair ``(i, j)``: a vector of class ``i`` has ``dual_coef[j - 1, s]``, one of class ``j`` has
        ``dual_coef[i, s]`` (libsvm's layout of the one-vs-one duals).
        """
        i, j = self.pairs[:, :1], self.pairs[:, 1:]
        cls = self.sv_class.unsqueeze(0)
        row = torch.where(cls == i, j - 1, i).clamp(0, self.num_classes - 2)
        coef = self.dual_coef.gather(0, row)
        return torch.where((cls == i) | (cls == j), coef, torch.zeros_like(coef))

    def kernel(self, x: Tensor) -> Tensor:
        """``(N, S)``: ``exp(-gamma ||x - sv_s||^2)`` of inputs ``(N, *in_shape)``, in the wider of their and the
        buffers' dtype (the expansion ``||x||^2 - 2 x.sv + ||sv||^2``, as scikit-learn computes it)."""
        flat = self.flatten(x)
        dtype = torch.promote_types(flat.dtype, self.support_vectors.dtype)
        flat, sv = flat.to(dtype), self.support_vectors.to(dtype)
        sq = (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ sv.T + (sv * sv).sum(1)
        return torch.exp(-self.gamma.to(dtype) * sq.clamp_min(0.0))

    def decision_pairs(self, x: Tensor) -> Tensor:
        """``(N, P)`` pairwise decision values ``f_ij(x)`` (positive: a vote for ``i``), exact and differentiable."""
        k = self.kernel(x)
        return k @ self.pair_coefficients().to(k.dtype).T + self.intercept.to(k.dtype)

    def forward(self, x: Tensor) -> Tensor:
        dec = self.decision_pairs(x)
        if self.num_classes == 2:
            return torch.cat([torch.zeros_like(dec), -dec], dim=1).to(x.dtype)
        first = nn.functional.one_hot(self.pairs[:, 0], self.num_classes).to(dec.dtype)  # (P, K)
        second = nn.functional.one_hot(self.pairs[:, 1], self.num_classes).to(dec.dtype)
        wins = (dec > 0).to(dec.dtype)
        votes = wins @ first + (1.0 - wins) @ second
        conf = dec @ (first - second)
        return (votes + conf / (3.0 * (conf.abs() + 1.0))).to(x.dtype)


class KNNModel(FlatModel):
    """k-nearest-neighbour classifier, uniform weights, Euclidean distance (``KNeighborsClassifier``).

    Scores are the log of the vote fractions among the ``k`` nearest training points (floored at
    ``1e-6``); vote ties go to the smallest class, as in ``predict``. Distances are computed in float64
    (``||x||^2 - 2 x.t + ||t||^2``, the expansion scikit-learn's brute-force search uses), in chunks; among
    training points at exactly the same distance the one with the smaller index is the nearer (what
    scikit-learn's brute-force search keeps), so the neighbour set is deterministic. The input gradient is zero.

    Buffers: ``train_x (M, D)``, ``train_y (M,)`` long. ``k`` is a plain int (it is in the model config).

    Example:
        >>> import torch
        >>> m = KNNModel(2, 2, n_train=3, k=1)
        >>> _ = m.train_x.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.9, 1.0]]))
        >>> _ = m.train_y.copy_(torch.tensor([0, 1, 1]))
        >>> m(torch.tensor([[0.1, 0.0], [1.0, 0.9]])).argmax(1).tolist()
        [0, 1]
    """

    kind = "knn"
    train_x: Tensor
    train_y: Tensor

    def __init__(self, in_features: int, num_classes: int, n_train: int, k: int) -> None:
        super().__init__(in_features, num_classes)
        self.n_train = check_int("n_train", n_train)
        self.k = check_int("k", k, maximum=self.n_train)
        self.register_buffer("train_x", torch.zeros(self.n_train, self.in_features))
        self.register_buffer("train_y", torch.zeros(self.n_train, dtype=torch.long))

    def _nearest(self, flat: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Squared distances and indices ``(n, k)`` of the ``k`` nearest, ties to the smaller index."""
        t = self.train_x.to(device=flat.device, dtype=torch.float64)
        t_sq = (t * t).sum(1)
        chunk = max(1, 2**22 // max(1, len(t)))  # about 32 MiB of float64 distances a chunk
        dists, index = [], []
        for part in flat.detach().to(torch.float64).split(chunk):
            d = ((part * part).sum(1, keepdim=True) - 2.0 * part @ t.T + t_sq).clamp_min(0.0)
            kth = torch.topk(d, k, dim=1, largest=False).values[:, -1:]
            closer = d < kth
            tied = d == kth
            need = k - closer.sum(1, keepdim=True)
            keep = closer | (tied & (tied.cumsum(1) <= need))
            idx = keep.nonzero()[:, 1].view(len(part), k)  # ascending index within each row
            sel = d.gather(1, idx)
            order = torch.sort(sel, dim=1, stable=True).indices
            dists.append(sel.gather(1, order))
            index.append(idx.gather(1, order))
        if not dists:
            empty = flat.new_zeros(0, k, dtype=torch.float64)
            return empty, empty.long()
        return torch.cat(dists), torch.cat(index)

    def neighbours(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """The ``k`` (default ``self.k``) nearest training points: ``(dist (N, k), index (N, k))``, nearest
        first; ``dist`` is the Euclidean distance (float64), ``index`` a row of ``train_x``."""
        k = self.k if k is None else check_int("k", k, maximum=self.n_train)
        sq, idx = self._nearest(self.flatten(x), k)
        return sq.sqrt(), idx

    def forward(self, x: Tensor) -> Tensor:
        flat = self.flatten(x)
        _, idx = self._nearest(flat, self.k)
        labels = self.train_y.to(idx.device)[idx]
        votes = nn.functional.one_hot(labels, self.num_classes).sum(1).to(torch.float64)
        scores = (votes / self.k).clamp_min(PROB_FLOOR).log().to(x.dtype)
        return self.connect(scores, flat)
