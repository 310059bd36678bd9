"""Fitting the ``sklearn-*`` models: their fitting options (one frozen config per model) and the fit itself.

:func:`advlab.train.train_model` hands a ``sklearn-*`` model here after loading the data: the estimator is
fitted on the flattened training inputs, converted with :func:`advlab.models.from_sklearn`, tested, and
returned as the same :class:`~advlab.train.TrainRun` as a torch model's, with a history of one "epoch" (the
fit). Defaults are chosen for images with pixels in ``[0, 1]`` (see each config). The fit runs on the CPU
(scikit-learn); the model is moved to the run's device afterwards.

Cost: kernel SVMs scale between quadratically and cubically with the training set; ``sklearn-svm-rbf`` on the
60,000 MNIST images takes many minutes (and kNN keeps every training image and compares each input with all of
them). Use ``n_train`` (``advlab train --n-train``) for quick runs; fitting all of MNIST is the user's choice.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advlab._provenance import versions
from advlab._validate import check_bool, check_float, check_int, check_optional
from advlab.models import Classifier, from_sklearn
from advlab.train.history import EpochRecord, TrainHistory


@dataclass(frozen=True)
class LogisticFit:
    """Fitting options of ``sklearn-logistic`` (``LogisticRegression``, lbfgs, multinomial).

    Attributes:
        C: inverse L2 regularisation strength (scikit-learn's C).
        max_iter: most solver iterations; 1000 converges on MNIST pixels in about a minute (100, the
            scikit-learn default, stops early).
    """

    C: float = 1.0
    max_iter: int = 1000


@dataclass(frozen=True)
class LinearSVMFit:
    """Fitting options of ``sklearn-linear-svm`` (``LinearSVC``, squared hinge, one-vs-rest).

    Attributes:
        C: inverse L2 regularisation strength (scikit-learn's C).
        max_iter: most solver iterations.
    """

    C: float = 1.0
    max_iter: int = 5000


@dataclass(frozen=True)
class LinearFit:
    """Fitting options of ``sklearn-linear`` (``RidgeClassifier`` with alpha 1: least squares on +-1 targets,
    closed form). Other linear classifiers (``SGDClassifier``, ...) enter through ``from_sklearn``."""


@dataclass(frozen=True)
class SVMRBFFit:
    """Fitting options of ``sklearn-svm-rbf`` (``SVC(kernel="rbf")``, one-vs-one).

    Attributes:
        C: penalty of margin violations (scikit-learn's C); 10 suits pixel data.
        gamma: kernel width ``exp(-gamma ||x - x'||^2)``; None: scikit-learn's "scale",
            1 / (D * variance of the training inputs).
    """

    C: float = 10.0
    gamma: float | None = None


@dataclass(frozen=True)
class TreeFit:
    """Fitting options of ``sklearn-tree`` (``DecisionTreeClassifier``, Gini).

    Attributes:
        max_depth: deepest level of the tree; None grows it until every leaf is pure.
        min_samples_leaf: fewest training examples in a leaf.
    """

    max_depth: int | None = None
    min_samples_leaf: int = 1


@dataclass(frozen=True)
class ForestFit:
    """Fitting options of ``sklearn-forest`` (``RandomForestClassifier``, or ``ExtraTreesClassifier``).

    Attributes:
        n_estimators: number of trees.
        max_depth: deepest level of each tree; None grows them until every leaf is pure.
        extra_trees: fit extremely randomised trees (``ExtraTreesClassifier``) instead of a random forest.
    """

    n_estimators: int = 100
    max_depth: int | None = None
    extra_trees: bool = False


@dataclass(frozen=True)
class KNNFit:
    """Fitting options of ``sklearn-knn`` (``KNeighborsClassifier``, uniform weights, Euclidean distance).

    Attributes:
        n_neighbors: k, the number of neighbours that vote.
    """

    n_neighbors: int = 5


# model name -> its fitting options
FIT_CONFIGS: dict[str, type] = {
    "sklearn-forest": ForestFit,
    "sklearn-knn": KNNFit,
    "sklearn-linear": LinearFit,
    "sklearn-linear-svm": LinearSVMFit,
    "sklearn-logistic": LogisticFit,
    "sklearn-svm-rbf": SVMRBFFit,
    "sklearn-tree": TreeFit,
}


def fit_config(model: str, options: Mapping[str, Any] | None) -> Any:
    """The fitting config of ``model`` with ``options`` applied and checked (``ValueError``/``TypeError``)."""
    config = FIT_CONFIGS[model]
    names = [f.name for f in fields(config)]
    unknown = sorted(set(options or {}) - set(names))
    if unknown:
        takes = ", ".join(names) or "none"
        raise ValueError(f"model {model!r} got unknown fitting option(s) {unknown}; it takes: {takes}")
    made = config(**dict(options or {}))
    values = asdict(made)
    for key in ("C", "gamma"):
        if key in values:
            check_optional(key, values[key], check_float, inclusive=False)
    for key in ("max_iter", "n_estimators", "n_neighbors", "min_samples_leaf"):
        if key in values:
            check_int(key, values[key])
    if "max_depth" in values:
        check_optional("max_depth", values["max_depth"], check_int)
    if "extra_trees" in values:
        check_bool("extra_trees", values["extra_trees"])
    return made


def make_estimator(model: str, config: Any, seed: int) -> Any:
    """The unfitted scikit-learn estimator of ``model`` with ``config``; ``seed`` becomes ``random_state``
    (reduced modulo 2**32, the range scikit-learn takes)."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    state = seed % 2**32
    c = asdict(config)
    if model == "sklearn-logistic":
        return LogisticRegression(C=c["C"], max_iter=c["max_iter"], random_state=state)
    if model == "sklearn-linear-svm":
        return LinearSVC(C=c["C"], max_iter=c["max_iter"], random_state=state)
    if model == "sklearn-linear":
        return RidgeClassifier(alpha=1.0)
    if model == "sklearn-svm-rbf":
        gamma = "scale" if c["gamma"] is None else c["gamma"]
        return SVC(C=c["C"], kernel="rbf", gamma=gamma, random_state=state)
    if model == "sklearn-tree":
        return DecisionTreeClassifier(max_depth=c["max_depth"], min_samples_leaf=c["min_samples_leaf"],
                                      random_state=state)
    if model == "sklearn-forest":
        forest = ExtraTreesClassifier if c["extra_trees"] else RandomForestClassifier
        return forest(n_estimators=c["n_estimators"], max_depth=c["max_depth"], random_state=state)
    if model == "sklearn-knn":
        return KNeighborsClassifier(n_neighbors=c["n_neighbors"])
    raise ValueError(f"{model!r} is not a scikit-learn model")


def check_sklearn_run(model: str, recipe: object, callbacks: object, torch_step: bool,
                      options: Mapping[str, Any] | None) -> Any:
    """Refuses what only torch models take (a recipe, callbacks, a step function) and returns the checked
    fitting config; each error is one line naming the model."""
    if not torch_step:
        raise ValueError(f"model {model!r} is fitted by scikit-learn; adversarial training (a step function) "
                         f"needs a torch model")
    if recipe is not None:
        raise ValueError(f"model {model!r} is fitted by scikit-learn and takes no training recipe (epochs, lr, "
                         f"batch size, ...); pass its fitting options as model_options (see "
                         f"advlab.train.FIT_CONFIGS[{model!r}])")
    if callbacks:
        raise ValueError(f"model {model!r} is fitted by scikit-learn in one call; it has no epochs for callbacks")
    return fit_config(model, options)


def fit_sklearn(model: str, config: Any, x_train: Tensor, y_train: Tensor, test: tuple[Tensor, Tensor] | None,
                *, dataset: str | None, shape: Mapping[str, Any], seed: int, device: torch.device,
                options: Mapping[str, Any] | None) -> tuple[Classifier, TrainHistory, dict[str, Any]]:
    """Fits ``model`` on ``(x_train, y_train)`` and tests it: ``(classifier, history, summary)``."""
    in_shape, k = tuple(shape["in_shape"]), int(shape["num_classes"])
    x_np = x_train.detach().cpu().flatten(1).numpy()
    y_np = y_train.detach().cpu().numpy().astype(np.int64)
    present = np.unique(y_np)
    if len(present) != k:
        raise ValueError(f"the training data of {model!r} holds {len(present)} of the {k} classes "
                         f"({present.tolist()}); scikit-learn models need every class; train on more examples "
                         f"(a larger n_train)")
    estimator = make_estimator(model, config, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(x_np, y_np)
    seconds = time.perf_counter() - t0
    converged = not any(w.category.__name__ == "ConvergenceWarning" for w in caught)
    for w in caught:  # shown to the user as usual; non-convergence is also recorded in the summary
        warnings.warn(w.message, w.category, stacklevel=3)
    net = from_sklearn(estimator, in_shape=in_shape, bounds=(0.0, 1.0))
    train_acc, loss, _ = _evaluate(net, x_train, y_train, estimator)
    test_acc, agreement = None, None
    if test is not None:
        test_acc, _, agreement = _evaluate(net, *test, estimator)
    metrics = {"fit_seconds": seconds, "converged": float(converged)}
    if agreement is not None:
        metrics["predict_agreement"] = agreement
    epoch = EpochRecord(epoch=0, loss=loss, train_accuracy=train_acc, val_accuracy=None, seconds=seconds, lr=0.0,
                        metrics=metrics)
    history = TrainHistory(epochs=[epoch], train_accuracy=train_acc, val_accuracy=None, seconds=seconds, steps=1,
                           test_accuracy=test_acc)
    net.to(device)
    summary: dict[str, Any] = {
        "model": model, "data": dataset, "epochs": 1, "seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds, 3), "prepare_seconds": 0.0, "train_accuracy": train_acc,
        "test_accuracy": test_acc, "loss": loss, "n_train": len(x_train), "n_test": 0 if test is None else len(test[0]),
        "seed": seed, "device": str(device), "torch_threads": torch.get_num_threads(),
        "recipe": {"estimator": type(estimator).__name__, **asdict(config)},
        "model_options": dict(options or {}), "converged": converged,
        "versions": {**versions(), "scikit-learn": _sklearn_version()},
    }
    if agreement is not None:
        summary["predict_agreement"] = agreement
    return net, history, summary


def _evaluate(net: Classifier, x: Tensor, y: Tensor, estimator: Any) -> tuple[float, float, float]:
    """Accuracy, mean cross-entropy of the scores, and the fraction of inputs where the module's argmax equals
    ``estimator.predict`` (a self-check of the conversion)."""
    with torch.no_grad():
        scores = torch.cat([net(part) for part in x.cpu().split(1024)]) if len(x) else torch.zeros(0, 2)
    pred = scores.argmax(1)
    y = y.cpu().long()
    acc = int((pred == y).sum()) / len(y) if len(y) else 0.0
    loss = float(F.cross_entropy(scores.double(), y)) if len(y) else 0.0
    agree = int((pred.numpy() == estimator.predict(x.cpu().flatten(1).numpy())).sum()) / len(y) if len(y) else 1.0
    return acc, loss, agree


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)
