"""scikit-learn classifiers behind advlab's model protocol: :func:`from_sklearn` and the ``sklearn-*`` models.

A fitted estimator becomes a torch module (:class:`LinearModel`, :class:`RBFSVM`, :class:`TreeModel`,
:class:`ForestModel`, :class:`KNNModel`) that holds the estimator's numbers as buffers, wrapped in a
:class:`~advlab.models.Classifier`: inputs ``(N, *in_shape)`` within ``bounds``, scores ``(N, K)`` whose argmax
is the estimator's ``predict``, exact gradients where the model has them (linear, RBF SVM) and zero gradients
where it is piecewise constant (trees, forests, kNN). The modules are registered as models, so
:func:`~advlab.models.save_checkpoint` stores them as safetensors + JSON (never a pickle) and
:func:`~advlab.models.load_checkpoint` rebuilds them; :func:`advlab.train.train_model` fits them.

| name | module | estimators | sizes in the model config |
|---|---|---|---|
| ``sklearn-logistic`` | :class:`LinearModel` | ``LogisticRegression`` | (none) |
| ``sklearn-linear-svm`` | :class:`LinearModel` | ``LinearSVC`` | (none) |
| ``sklearn-linear`` | :class:`LinearModel` | ``RidgeClassifier``, ``SGDClassifier``, any linear classifier | (none) |
| ``sklearn-svm-rbf`` | :class:`RBFSVM` | ``SVC``/``NuSVC`` with ``kernel="rbf"`` | ``n_support`` per class |
| ``sklearn-tree`` | :class:`TreeModel` | ``DecisionTreeClassifier`` | ``n_nodes`` |
| ``sklearn-forest`` | :class:`ForestModel` | ``RandomForestClassifier``/``ExtraTreesClassifier`` | ``n_nodes`` |
| ``sklearn-knn`` | :class:`KNNModel` | ``KNeighborsClassifier`` (uniform, Euclidean) | ``n_train``, ``k`` |

Every config also records ``estimator``, the class name of the converted estimator. Coefficients, support
vectors and training points are stored in float32 (torch's default; advlab's datasets are float32, so inputs
lose nothing); tree thresholds and leaf probabilities in float64, as scikit-learn holds them, so that tree
decisions agree bit for bit (do not cast a tree model with ``.float()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from advlab._validate import check_int
from advlab.models._sklearn_convert import check_classes, converter
from advlab.models._sklearn_modules import RBFSVM, FlatModel, KNNModel, LinearModel
from advlab.models._sklearn_trees import ForestModel, TreeModel
from advlab.models.classifier import Classifier
from advlab.models.factory import _check_in_shape, create_model, register_model

__all__ = [
    "RBFSVM",
    "SKLEARN_MODELS",
    "ForestModel",
    "KNNModel",
    "LinearModel",
    "TreeModel",
    "from_sklearn",
    "is_sklearn_model",
]

SKLEARN_MODELS = (
    "sklearn-forest", "sklearn-knn", "sklearn-linear", "sklearn-linear-svm", "sklearn-logistic", "sklearn-svm-rbf",
    "sklearn-tree",
)


def is_sklearn_model(name: object) -> bool:
    """Whether ``name`` is one of the registered scikit-learn models (fitted, not trained by gradient descent).

    Example:
        >>> is_sklearn_model("sklearn-tree"), is_sklearn_model("cnn-small")
        (True, False)
    """
    return isinstance(name, str) and name in SKLEARN_MODELS


def _estimator_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"estimator must be a non-empty str (a scikit-learn class name), got {value!r}")
    return value


def _sized(module: FlatModel, in_shape: Sequence[int]) -> FlatModel:
    module.in_shape = tuple(in_shape)
    return module


# ---------------------------------------------------------------------------------------------------------
# the registered models (empty modules of the right sizes; from_sklearn or a checkpoint fills them)


@register_model("sklearn-logistic")
def sklearn_logistic(in_shape: tuple[int, int, int], num_classes: int, *,
                     estimator: str = "LogisticRegression") -> nn.Module:
    """Logistic (softmax) regression fitted by scikit-learn: a :class:`LinearModel`, zero until filled."""
    _estimator_name(estimator)
    return _sized(LinearModel(math.prod(in_shape), num_classes), in_shape)


@register_model("sklearn-linear-svm")
def sklearn_linear_svm(in_shape: tuple[int, int, int], num_classes: int, *,
                       estimator: str = "LinearSVC") -> nn.Module:
    """A linear SVM (one-vs-rest) fitted by scikit-learn: a :class:`LinearModel`, zero until filled."""
    _estimator_name(estimator)
    return _sized(LinearModel(math.prod(in_shape), num_classes), in_shape)


@register_model("sklearn-linear")
def sklearn_linear(in_shape: tuple[int, int, int], num_classes: int, *,
                   estimator: str = "RidgeClassifier") -> nn.Module:
    """Any other linear classifier of scikit-learn: a :class:`LinearModel`, zero until filled."""
    _estimator_name(estimator)
    return _sized(LinearModel(math.prod(in_shape), num_classes), in_shape)


@register_model("sklearn-svm-rbf")
def sklearn_svm_rbf(in_shape: tuple[int, int, int], num_classes: int, *, n_support: Sequence[int] | None = None,
                    estimator: str = "SVC") -> nn.Module:
    """An RBF-kernel SVM (one-vs-one): an :class:`RBFSVM` with ``n_support`` vectors per class (default one)."""
    _estimator_name(estimator)
    counts = [1] * num_classes if n_support is None else n_support
    if not isinstance(counts, (list, tuple)):
        raise TypeError(f"n_support must be a list of {num_classes} ints (one per class), got {n_support!r}")
    return _sized(RBFSVM(math.prod(in_shape), num_classes, list(counts)), in_shape)


@register_model("sklearn-tree")
def sklearn_tree(in_shape: tuple[int, int, int], num_classes: int, *, n_nodes: int = 1,
                 estimator: str = "DecisionTreeClassifier") -> nn.Module:
    """A decision tree: a :class:`TreeModel` of ``n_nodes`` nodes (all leaves until filled)."""
    _estimator_name(estimator)
    return _sized(TreeModel(math.prod(in_shape), num_classes, n_nodes), in_shape)


@register_model("sklearn-forest")
def sklearn_forest(in_shape: tuple[int, int, int], num_classes: int, *, n_nodes: Sequence[int] = (1,),
                   estimator: str = "RandomForestClassifier") -> nn.Module:
    """A forest: a :class:`ForestModel` with one tree per entry of ``n_nodes`` (its node count)."""
    _estimator_name(estimator)
    if not isinstance(n_nodes, (list, tuple)):
        raise TypeError(f"n_nodes must be a list of node counts, one per tree, got {n_nodes!r}")
    return _sized(ForestModel(math.prod(in_shape), num_classes, list(n_nodes)), in_shape)


@register_model("sklearn-knn")
def sklearn_knn(in_shape: tuple[int, int, int], num_classes: int, *, n_train: int = 1, k: int = 1,
                estimator: str = "KNeighborsClassifier") -> nn.Module:
    """k-nearest neighbours: a :class:`KNNModel` over ``n_train`` stored training points."""
    _estimator_name(estimator)
    return _sized(KNNModel(math.prod(in_shape), num_classes, n_train, k), in_shape)


def from_sklearn(estimator: Any, *, in_shape: Sequence[int] | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> Classifier:
    """Converts a fitted scikit-learn classifier into an advlab :class:`~advlab.models.Classifier`.

    The estimator's numbers are copied into the module of its kind (see the module docstring's table); the
    result takes inputs ``(N, *in_shape)`` within ``bounds``, flattens them to the ``n_features_in_`` features
    the estimator was fitted on and returns ``(N, K)`` scores whose argmax is ``estimator.predict`` of the
    flattened inputs: exact logits for linear models, scikit-learn's one-vs-rest decision function for RBF
    SVMs, log-probabilities for trees, forests and kNN. It records ``model_name``/``model_config`` (name,
    ``in_shape``, ``num_classes``, sizes, estimator class), so :func:`~advlab.models.save_checkpoint` saves it
    as safetensors + JSON and :func:`~advlab.models.load_checkpoint` rebuilds it. No normalisation is added:
    the estimator must have been fitted on raw inputs (flattened, in ``bounds``).

    Args:
        estimator: a fitted classifier (see the table); pipelines are refused.
        in_shape: ``(C, H, W)`` of one input, whose sizes multiply to ``n_features_in_``; default
            ``(1, 1, n_features_in_)``.
        bounds: ``(low, high)`` of valid raw inputs, default ``(0.0, 1.0)``.

    Returns:
        The :class:`~advlab.models.Classifier` (in eval mode, on the CPU); its ``net`` is the module.

    Raises:
        TypeError: an unsupported estimator (the message lists the supported ones) or a pipeline.
        ValueError: an unfitted estimator, an ``in_shape`` of the wrong size, classes that are not ``0..K-1``,
            an unsupported setting (a non-RBF kernel, kNN with weights or another metric).

    Example:
        >>> import torch
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> from advlab import load_dataset
        >>> x, y = load_dataset("digits", "train")
        >>> tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(x.flatten(1).numpy(), y.numpy())
        >>> model = from_sklearn(tree, in_shape=(1, 8, 8))
        >>> bool((model(x).argmax(1).numpy() == tree.predict(x.flatten(1).numpy())).all())
        True
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    name, convert = converter(estimator)
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise ValueError(f"{type(estimator).__name__} is not fitted; call .fit(X, y) first") from None
    d = int(estimator.n_features_in_)
    shape = (1, 1, d) if in_shape is None else _check_in_shape(in_shape)
    if math.prod(shape) != d:
        raise ValueError(f"in_shape {tuple(shape)} holds {math.prod(shape)} values but {type(estimator).__name__} "
                         f"was fitted on {d} features (n_features_in_); pass an in_shape whose sizes multiply to {d}")
    k = check_classes(estimator)
    sizes, fill = convert(estimator, k)
    model = create_model(name, in_shape=shape, num_classes=check_int("num_classes", k, minimum=2), normalize=False,
                         bounds=bounds, estimator=type(estimator).__name__, **sizes)
    fill(model.net)
    return model.eval()
