"""Reading fitted scikit-learn estimators: which module each becomes, the sizes it needs, and the numbers that
fill its buffers (see :func:`advlab.models.from_sklearn`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab.models._sklearn_modules import RBFSVM, KNNModel, LinearModel
from advlab.models._sklearn_trees import ForestModel, TreeModel

Filler = Callable[[nn.Module], None]


def _dense(a: Any) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)


def _put(buffer: Tensor, values: Any) -> None:
    with torch.no_grad():
        buffer.copy_(torch.from_numpy(np.array(values, copy=True)).to(buffer.dtype).reshape(buffer.shape))


def _linear(est: Any, k: int) -> tuple[dict[str, Any], Filler]:
    coef = np.atleast_2d(_dense(est.coef_).astype(np.float64))
    intercept = np.broadcast_to(np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64)), (coef.shape[0],))
    if coef.shape[0] == 1 and k == 2:  # binary: the score of class 1 is the decision function, class 0's is 0
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    if coef.shape[0] != k:
        raise ValueError(f"{type(est).__name__}.coef_ has {coef.shape[0]} rows for {k} classes; refit it")

    def fill(net: nn.Module) -> None:
        assert isinstance(net, LinearModel)
        _put(net.weight, coef)
        _put(net.bias, intercept)

    return {}, fill


def _svm(est: Any, k: int) -> tuple[dict[str, Any], Filler]:
    if est.kernel != "rbf":
        raise ValueError(f"{type(est).__name__}(kernel={est.kernel!r}) is not supported: only kernel='rbf' is "
                         f"converted (use LinearSVC for a linear SVM)")
    dual = _dense(est.dual_coef_).astype(np.float64)
    intercept = np.asarray(est.intercept_, dtype=np.float64)
    if k == 2:  # a binary SVC exposes the negated libsvm coefficients; the module keeps libsvm's convention
        dual, intercept = -dual, -intercept
    n_support = [int(n) for n in est.n_support_]
    sv = _dense(est.support_vectors_)
    gamma = float(est._gamma)  # the value used in fit ("scale"/"auto" resolved)

    def fill(net: nn.Module) -> None:
        assert isinstance(net, RBFSVM)
        _put(net.support_vectors, sv)
        _put(net.dual_coef, dual)
        _put(net.intercept, intercept)
        _put(net.gamma, gamma)

    return {"n_support": n_support}, fill


def _tree_arrays(est: Any) -> dict[str, np.ndarray]:
    t = est.tree_
    if t.n_outputs != 1:
        raise ValueError(f"{type(est).__name__} has {t.n_outputs} outputs; only single-output trees are supported")
    value = np.asarray(t.value[:, 0, :], dtype=np.float64)
    total = value.sum(axis=1)[:, np.newaxis]
    total[total == 0.0] = 1.0
    return {"feature": t.feature, "threshold": t.threshold, "left": t.children_left, "right": t.children_right,
            "value": value / total}  # predict_proba's normalisation, in the same float64 operations


def _fill_tree(net: TreeModel, arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        _put(getattr(net, name), values)


def _tree(est: Any, k: int) -> tuple[dict[str, Any], Filler]:
    arrays = _tree_arrays(est)

    def fill(net: nn.Module) -> None:
        assert isinstance(net, TreeModel)
        _fill_tree(net, arrays)

    return {"n_nodes": len(arrays["left"])}, fill


def _forest(est: Any, k: int) -> tuple[dict[str, Any], Filler]:
    trees = [_tree_arrays(e) for e in est.estimators_]

    def fill(net: nn.Module) -> None:
        assert isinstance(net, ForestModel)
        for module, arrays in zip(net.trees, trees, strict=True):
            assert isinstance(module, TreeModel)
            _fill_tree(module, arrays)

    return {"n_nodes": [len(a["left"]) for a in trees]}, fill


def _knn(est: Any, k: int) -> tuple[dict[str, Any], Filler]:
    if est.weights != "uniform":
        raise ValueError(f"KNeighborsClassifier(weights={est.weights!r}) is not supported: only "
                         f"weights='uniform' is converted")
    if est.effective_metric_ != "euclidean":
        raise ValueError(f"KNeighborsClassifier with metric {est.effective_metric_!r} is not supported: only the "
                         f"Euclidean distance (metric='minkowski', p=2, or 'euclidean') is converted")
    if np.ndim(est._y) != 1:
        raise ValueError("multi-output KNeighborsClassifier is not supported")
    train_x, train_y = _dense(est._fit_X), np.asarray(est._y, dtype=np.int64)
    n_neighbors = int(est.n_neighbors)
    if n_neighbors > len(train_x):
        raise ValueError(f"KNeighborsClassifier has n_neighbors={n_neighbors} > {len(train_x)} training points")

    def fill(net: nn.Module) -> None:
        assert isinstance(net, KNNModel)
        _put(net.train_x, train_x)
        _put(net.train_y, train_y)

    return {"n_train": len(train_x), "k": n_neighbors}, fill


def converter(est: Any) -> tuple[str, Callable[[Any, int], tuple[dict[str, Any], Filler]]]:
    """The model name and converter of ``est``; ``TypeError`` naming the supported estimators otherwise."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC, LinearSVC, NuSVC
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(est, Pipeline):
        raise TypeError("scikit-learn pipelines are not supported: advlab models take the raw inputs, so convert "
                        "the final estimator of a pipeline without transformers (pipeline[-1])")
    table: list[tuple[tuple[type, ...], str, Callable[[Any, int], tuple[dict[str, Any], Filler]]]] = [
        ((LogisticRegression,), "sklearn-logistic", _linear),
        ((LinearSVC,), "sklearn-linear-svm", _linear),
        ((LinearClassifierMixin,), "sklearn-linear", _linear),
        ((SVC, NuSVC), "sklearn-svm-rbf", _svm),
        ((DecisionTreeClassifier,), "sklearn-tree", _tree),
        ((RandomForestClassifier, ExtraTreesClassifier), "sklearn-forest", _forest),
        ((KNeighborsClassifier,), "sklearn-knn", _knn),
    ]
    for types, name, convert in table:
        if isinstance(est, types):
            return name, convert
    raise TypeError(
        f"cannot convert {type(est).__name__}: supported estimators are LogisticRegression, LinearSVC, "
        f"SGDClassifier, RidgeClassifier (any linear classifier), SVC/NuSVC (kernel='rbf'), DecisionTreeClassifier, "
        f"RandomForestClassifier, ExtraTreesClassifier and KNeighborsClassifier"
    )


def check_classes(est: Any) -> int:
    classes = getattr(est, "classes_", None)
    arr = np.asarray(classes) if classes is not None and not isinstance(classes, list) else None
    if arr is None or arr.ndim != 1:
        raise ValueError(f"{type(est).__name__} has no single list of classes_ (multi-output?); advlab models "
                         f"have one label per example")
    k = len(arr)
    if arr.dtype.kind not in "iu" or not np.array_equal(arr, np.arange(k)) or k < 2:
        shown = arr.tolist()[:12]
        raise ValueError(f"{type(est).__name__} was fitted on classes {shown}, but advlab labels are class indices "
                         f"0..K-1 (K >= 2); fit it on integer labels 0..K-1 (e.g. np.unique(y, return_inverse=True))")
    return k
