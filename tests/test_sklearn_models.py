"""scikit-learn models behind the model protocol: conversion (from_sklearn), exactness against the estimators on
the bundled digits, gradients, tree geometry, checkpoints without pickle, fitting through train_model and the
CLI, errors, and attacks on the converted models."""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors import safe_open
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

import advlab
from advlab.cli.main import cli
from advlab.models import (
    RBFSVM,
    SKLEARN_MODELS,
    Classifier,
    ForestModel,
    KNNModel,
    LinearModel,
    TreeModel,
    create_model,
    from_sklearn,
    list_models,
    load_checkpoint,
    model_hash,
    save_checkpoint,
)
from advlab.train import Recipe, TrainRun, save_run, train_model


@pytest.fixture
def one_blas_thread() -> Iterator[None]:
    """scikit-learn's BLAS/OpenMP pools on one thread: on a loaded 2-core machine spinning pool threads make a
    digits fit many times slower."""
    with threadpool_limits(limits=1):
        yield


pytestmark = pytest.mark.usefixtures("one_thread", "one_blas_thread")

X, Y = advlab.load_dataset("digits", "train")
XT, YT = advlab.load_dataset("digits", "test")
XN, YN, XTN = X.flatten(1).numpy(), Y.numpy(), XT.flatten(1).numpy()

# Estimators fitted once per session: id -> (factory, binary labels?)
ESTIMATORS: dict[str, tuple[Callable[[], Any], bool]] = {
    "logistic": (lambda: LogisticRegression(max_iter=1000), False),
    "logistic-binary": (lambda: LogisticRegression(max_iter=1000), True),
    "linear-svm": (lambda: LinearSVC(), False),
    "sgd": (lambda: SGDClassifier(random_state=0), False),
    "ridge": (lambda: RidgeClassifier(), False),
    "ridge-binary": (lambda: RidgeClassifier(), True),
    "svm-rbf": (lambda: SVC(C=10), False),
    "svm-rbf-binary": (lambda: SVC(), True),
    "tree": (lambda: DecisionTreeClassifier(random_state=0), False),
    "tree-depth5": (lambda: DecisionTreeClassifier(max_depth=5, random_state=0), False),
    "forest": (lambda: RandomForestClassifier(n_estimators=30, random_state=0), False),
    "extra-trees": (lambda: ExtraTreesClassifier(n_estimators=30, random_state=0), False),
    "knn": (lambda: KNeighborsClassifier(), False),
    "knn-4": (lambda: KNeighborsClassifier(n_neighbors=4), False),  # even k: vote ties, to the smallest class
}
KINDS = {"logistic": "linear", "linear-svm": "linear", "sgd": "linear", "ridge": "linear", "svm-rbf": "svm-rbf",
         "tree": "tree", "forest": "forest", "extra-trees": "forest", "knn": "knn"}
_FITTED: dict[str, Any] = {}


def fitted(key: str) -> Any:
    if key not in _FITTED:
        factory, binary = ESTIMATORS[key]
        _FITTED[key] = factory().fit(XN, YN % 2 if binary else YN)
    return _FITTED[key]


def converted(key: str) -> Classifier:
    return from_sklearn(fitted(key), in_shape=(1, 8, 8))


def scores(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


# --- the interface --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(KINDS))
def test_modules_have_the_agreed_kind_sizes_and_buffers(key: str) -> None:
    model = converted(key)
    net, k, d = model.net, 10, 64
    assert net.kind == KINDS[key] and net.num_classes == k and net.in_features == d
    assert not list(model.parameters()), "the numbers are buffers, not parameters"
    assert model.model_name in SKLEARN_MODELS and model.model_config["in_shape"] == [1, 8, 8]
    assert model.model_config["num_classes"] == k and model.model_config["estimator"] == type(fitted(key)).__name__
    if isinstance(net, LinearModel):
        w, b = net.linear_weights()
        assert w.shape == (k, d) and b.shape == (k,) and w is net.weight
    elif isinstance(net, RBFSVM):
        s = len(fitted(key).support_vectors_)
        assert net.support_vectors.shape == (s, d) and net.dual_coef.shape == (k - 1, s)
        assert net.intercept.shape == (45,) and net.gamma.shape == () and net.pairs.tolist()[:2] == [[0, 1], [0, 2]]
    elif isinstance(net, TreeModel):
        m = fitted(key).tree_.node_count
        assert net.feature.shape == (m,) and net.feature.dtype == torch.long and net.left.dtype == torch.long
        assert net.threshold.dtype == torch.float64 and net.value.shape == (m, k)
        leaf = net.left == -1
        assert torch.equal(leaf, net.right == -1) and bool((net.feature[leaf] == -2).all())
    elif isinstance(net, ForestModel):
        assert len(net.trees) == 30 and all(isinstance(t, TreeModel) for t in net.trees)
    else:
        assert isinstance(net, KNNModel)
        assert net.train_x.shape == (len(XN), d) and net.train_y.dtype == torch.long and net.k == 5


def test_create_model_builds_empty_modules_of_the_recorded_sizes() -> None:
    tree = create_model("sklearn-tree", in_shape=(1, 8, 8), num_classes=10, n_nodes=7)
    assert isinstance(tree.net, TreeModel) and tree.net.value.shape == (7, 10)
    forest = create_model("sklearn-forest", in_shape=(1, 8, 8), num_classes=3, n_nodes=[3, 5])
    assert [t.n_nodes for t in forest.net.trees] == [3, 5]
    svm = create_model("sklearn-svm-rbf", in_shape=(1, 2, 2), num_classes=3, n_support=[2, 0, 1])
    assert svm.net.sv_class.tolist() == [0, 0, 2] and svm.net.support_vectors.shape == (3, 4)
    knn = create_model("sklearn-knn", in_shape=(1, 2, 2), num_classes=2, n_train=9, k=3)
    assert knn.net.train_x.shape == (9, 4) and knn.model_config["k"] == 3
    with pytest.raises(ValueError, match="k must be an integer >= 1 and <= 9"):
        create_model("sklearn-knn", in_shape=(1, 2, 2), num_classes=2, n_train=9, k=10)
    assert set(SKLEARN_MODELS) <= set(list_models())
    seen: list[str] = []
    forest.apply(lambda m: seen.append(type(m).__name__))  # still nn.Module.apply when given a function
    assert seen.count("TreeModel") == 2 and seen[-1] == "Classifier"


# --- exactness against scikit-learn ---------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(ESTIMATORS))
def test_argmax_equals_predict_on_digits(key: str) -> None:
    est, model = fitted(key), converted(key)
    for x, xn in ((XT, XTN), (X, XN)):
        out = scores(model, x)
        assert out.shape == (len(x), len(est.classes_)) and out.dtype == torch.float32
        ours, theirs = out.argmax(1).numpy(), est.predict(xn)
        differ = np.nonzero(ours != theirs)[0]
        if key == "svm-rbf":
            # predict gives a tie in the one-vs-one votes to the smallest class, the scores to the more confident
            # one: every disagreement must be such a tie (1 of the 360 test images; none of the training images).
            votes = np.floor(out.numpy()[differ] + 0.5)
            for row, i in zip(votes, differ, strict=True):
                tied = np.nonzero(row == row.max())[0]
                assert len(tied) > 1 and theirs[i] == tied[0] and ours[i] in tied
            assert len(differ) <= 2
        else:
            assert len(differ) == 0, f"{len(differ)} disagreements with predict"


@pytest.mark.parametrize("key", ["logistic", "linear-svm", "sgd", "ridge", "logistic-binary", "ridge-binary"])
def test_linear_scores_are_the_decision_function(key: str) -> None:
    est, model = fitted(key), converted(key)
    out = scores(model, XT).double().numpy()
    dec = est.decision_function(XTN)
    expected = np.stack([np.zeros_like(dec), dec], axis=1) if dec.ndim == 1 else dec
    np.testing.assert_allclose(out, expected, atol=2e-4)
    if key == "logistic":  # exact logits: the softmax is predict_proba
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(out), 1).numpy(), est.predict_proba(XTN), atol=1e-5)
    if key == "logistic-binary":
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(out), 1).numpy(), est.predict_proba(XTN), atol=1e-5)


def test_rbf_svm_pairwise_and_class_scores_are_scikit_learns() -> None:
    est, model = fitted("svm-rbf"), converted("svm-rbf")
    with torch.no_grad():
        pairs = model.net.decision_pairs(XT).double().numpy()
    ovo = copy.deepcopy(est)
    ovo.decision_function_shape = "ovo"
    np.testing.assert_allclose(pairs, ovo.decision_function(XTN), atol=5e-5)
    np.testing.assert_allclose(scores(model, XT).double().numpy(), est.decision_function(XTN), atol=5e-5)  # ovr
    binary, bmodel = fitted("svm-rbf-binary"), converted("svm-rbf-binary")
    out = scores(bmodel, XT).double().numpy()
    np.testing.assert_allclose(out[:, 1], binary.decision_function(XTN), atol=5e-5)
    assert (out[:, 0] == 0).all()
    with torch.no_grad():
        np.testing.assert_allclose(bmodel.net.decision_pairs(XT)[:, 0].numpy(), -binary.decision_function(XTN),
                                   atol=5e-5)


@pytest.mark.parametrize("key", ["tree", "forest", "extra-trees"])
def test_tree_probabilities_and_leaves_are_scikit_learns_bit_for_bit(key: str) -> None:
    est, net = fitted(key), converted(key).net
    for x, xn in ((XT, XTN), (X, XN)):
        assert np.array_equal(net.apply(x).numpy(), est.apply(xn))
        np.testing.assert_allclose(net.predict_proba(x).numpy(), est.predict_proba(xn), rtol=0, atol=1e-12)
        expected = np.log(np.maximum(est.predict_proba(xn), 1e-6))
        np.testing.assert_allclose(scores(net, x).double().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_tree_decisions_compare_the_float32_input_with_the_float64_threshold() -> None:
    est = DecisionTreeClassifier().fit(np.array([[0.0], [0.2]], dtype=np.float32), [0, 1])
    est.tree_.threshold[0] = 0.1  # not a float32: float32(0.1) > 0.1, so scikit-learn sends 0.1 right
    assert est.apply(np.array([[0.1]])).tolist() == [2]
    net = from_sklearn(est).net
    assert net.threshold[0].item() == 0.1
    assert net.apply(torch.tensor([[0.1]])).tolist() == [2]
    assert net.apply(torch.tensor([[0.1]], dtype=torch.float64)).tolist() == [2]  # rounded to float32 first
    assert net.apply(torch.tensor([[0.0999999]])).tolist() == [1]


@pytest.mark.parametrize("key", ["tree", "tree-depth5"])
def test_leaf_boxes_hold_exactly_the_inputs_that_reach_each_leaf(key: str) -> None:
    net = converted(key).net
    leaves, lower, upper = net.leaf_boxes()
    assert torch.equal(leaves, (net.left == -1).nonzero().squeeze(1))
    assert lower.shape == upper.shape == (len(leaves), 64) and bool((lower < upper).all())
    assert bool(torch.isinf(lower).any()) and bool(torch.isinf(upper).any())
    for x in (X, XT):
        v = x.flatten(1).double()[:, None, :]
        inside = ((v > lower) & (v <= upper)).all(dim=2)  # (N, L)
        assert torch.equal(inside.sum(1), torch.ones(len(x), dtype=torch.long)), "each point lies in one box"
        assert torch.equal(leaves[inside.float().argmax(1)], net.apply(x))


@pytest.mark.parametrize("key", ["knn", "knn-4"])
def test_knn_neighbours_are_scikit_learns(key: str) -> None:
    est, net = fitted(key), converted(key).net
    dist, index = net.neighbours(XT)
    their_dist, their_index = est.kneighbors(XTN)
    np.testing.assert_allclose(dist.numpy(), their_dist, atol=1e-9)
    assert (index.numpy() == their_index).mean() > 0.99  # ties in distance may be listed in another order
    d2, _ = net.neighbours(XT[:5], k=9)
    assert d2.shape == (5, 9) and bool((d2[:, 1:] >= d2[:, :-1]).all())


# --- gradients ------------------------------------------------------------------------------------------


def test_linear_gradients_are_the_weight_rows() -> None:
    model = converted("logistic")
    x = XT[:4].clone().requires_grad_(True)
    w = model.net.weight
    for c in (0, 3, 9):
        (g,) = torch.autograd.grad(model(x)[:, c].sum(), x)
        assert torch.allclose(g.flatten(1), w[c].expand(4, -1), atol=1e-6)


def _rbf_pair_gradient(est: SVC, x: np.ndarray, i: int, j: int) -> np.ndarray:
    """The closed form of d f_ij / dx from the estimator's public attributes (libsvm's one-vs-one layout)."""
    starts = np.concatenate([[0], np.cumsum(est.n_support_)])
    sv_i, sv_j = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
    sv = np.concatenate([est.support_vectors_[sv_i], est.support_vectors_[sv_j]])
    a = np.concatenate([est.dual_coef_[j - 1, sv_i], est.dual_coef_[i, sv_j]])
    diff = x[:, None, :] - sv[None]
    kern = np.exp(-est._gamma * (diff**2).sum(-1))
    return np.einsum("s,nsd->nd", a, -2.0 * est._gamma * diff * kern[..., None])


def test_rbf_svm_gradients_are_the_closed_form() -> None:
    est, model = fitted("svm-rbf"), converted("svm-rbf")
    x = XT[:5].clone().requires_grad_(True)
    pairs = model.net.pairs.tolist()
    for p in (0, 7, 44):
        (g,) = torch.autograd.grad(model.net.decision_pairs(x)[:, p].sum(), x)
        expected = _rbf_pair_gradient(est, XTN[:5].astype(np.float64), *pairs[p])
        np.testing.assert_allclose(g.flatten(1).double().numpy(), expected, rtol=1e-3, atol=1e-4)
    (g,) = torch.autograd.grad(model(x).sum(), x)  # the class scores carry the pairwise gradients
    assert float(g.abs().sum()) > 0


@pytest.mark.parametrize("key", ["tree", "forest", "knn"])
def test_piecewise_constant_models_give_a_zero_gradient_not_an_error(key: str) -> None:
    model = converted(key)
    x = XT[:3].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), YT[:3]), x)
    assert torch.equal(g, torch.zeros_like(x))


# --- checkpoints: safetensors + JSON, no pickle ------------------------------------------------------------


def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)


def _check_no_pickle_files(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) > 0


@pytest.mark.parametrize("key", ["logistic", "logistic-binary", "svm-rbf", "svm-rbf-binary", "tree", "forest", "knn"])
def test_save_load_round_trip_without_pickle(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = converted(key)
    path = save_checkpoint(model, tmp_path / key)
    _check_no_pickle_files(path)
    _no_pickle(monkeypatch)
    loaded = load_checkpoint(path)
    assert type(loaded.net) is type(model.net) and loaded.model_config == model.model_config
    assert model_hash(loaded) == model_hash(model)
    assert torch.equal(scores(loaded, XT), scores(model, XT))
    assert np.array_equal(scores(loaded, XT).argmax(1).numpy(), scores(model, XT).argmax(1).numpy())


def test_cli_train_sklearn_tree_saves_a_checkpoint_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tree"
    result = CliRunner().invoke(cli, ["train", "--model", "sklearn-tree", "--data", "digits", "--n-train", "400",
                                      "--max-depth", "8", "--seed", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["model"] == "sklearn-tree" and summary["n_train"] == 400 and summary["epochs"] == 1
    assert summary["recipe"] == {"estimator": "DecisionTreeClassifier", "max_depth": 8, "min_samples_leaf": 1}
    _check_no_pickle_files(out)
    meta = json.loads((out / "model.json").read_text())
    assert meta["extra"]["recipe"]["max_depth"] == 8 and meta["model"]["config"]["n_nodes"] > 1
    _no_pickle(monkeypatch)
    loaded = load_checkpoint(out)
    again = train_model("sklearn-tree", "digits", seed=3, n_train=400, model_options={"max_depth": 8})
    assert model_hash(loaded) == model_hash(again.model)
    acc = float((scores(loaded, XT).argmax(1) == YT).double().mean())
    assert acc == pytest.approx(summary["test_accuracy"]) and acc > 0.6


# --- train_model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SKLEARN_MODELS)
def test_train_model_fits_every_sklearn_model(name: str, tmp_path: Path) -> None:
    run = train_model(name, "digits", n_train=400, seed=1, threads=1)
    assert isinstance(run, TrainRun) and isinstance(run.model, Classifier) and run.model.model_name == name
    torch_run_keys = {"model", "data", "epochs", "seconds", "seconds_per_epoch", "prepare_seconds", "train_accuracy",
                      "test_accuracy", "loss", "n_train", "n_test", "seed", "device", "torch_threads", "recipe",
                      "model_options", "versions"}
    assert torch_run_keys <= set(run.summary)
    assert len(run.history.epochs) == 1 and run.history.test_accuracy == run.summary["test_accuracy"]
    assert run.summary["test_accuracy"] > 0.75 and math.isfinite(run.summary["loss"])
    assert run.summary["predict_agreement"] >= 0.99
    assert run.model.normalization() == (None, None)
    path = save_run(run, tmp_path / name)
    assert torch.equal(scores(load_checkpoint(path), XT[:50]), scores(run.model, XT[:50]))


def test_train_model_is_reproducible_per_seed() -> None:
    a, b, c = (train_model("sklearn-forest", "digits", n_train=300, seed=s, model_options={"n_estimators": 5})
               for s in (4, 4, 5))
    assert model_hash(a.model) == model_hash(b.model) != model_hash(c.model)
    assert a.summary["recipe"]["n_estimators"] == 5


# --- errors ---------------------------------------------------------------------------------------------


def _one_line(info: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


def test_conversion_errors_are_one_clear_line() -> None:
    with pytest.raises(ValueError, match=r"^LogisticRegression is not fitted; call \.fit\(X, y\) first$") as info:
        from_sklearn(LogisticRegression())
    _one_line(info)
    with pytest.raises(TypeError, match="cannot convert GaussianNB: supported estimators are LogisticRegression"):
        from_sklearn(GaussianNB().fit(XN, YN))
    with pytest.raises(TypeError, match="pipelines are not supported"):
        from_sklearn(make_pipeline(StandardScaler(), LogisticRegression()).fit(XN[:100], YN[:100]))
    with pytest.raises(ValueError, match=r"in_shape \(1, 7, 7\) holds 49 values but .* fitted on 64 features"):
        from_sklearn(fitted("tree"), in_shape=(1, 7, 7))
    for labels, what in ((YN + 1, r"\[1, 2, 3"), (YN.astype(str), r"\['0', '1'"), (YN.astype(float), r"\[0\.0, 1\.0")):
        with pytest.raises(ValueError, match=f"fitted on classes {what}.*advlab labels are class indices") as info:
            from_sklearn(DecisionTreeClassifier(max_depth=2).fit(XN, labels))
        _one_line(info)
    with pytest.raises(ValueError, match="only kernel='rbf'"):
        from_sklearn(SVC(kernel="poly").fit(XN[:200], YN[:200]))
    with pytest.raises(ValueError, match="only weights='uniform'"):
        from_sklearn(KNeighborsClassifier(weights="distance").fit(XN, YN))
    with pytest.raises(ValueError, match="'manhattan' is not supported"):
        from_sklearn(KNeighborsClassifier(metric="manhattan").fit(XN, YN))


def test_wrong_feature_dimension_at_forward_is_a_clear_error() -> None:
    model = converted("svm-rbf")
    with pytest.raises(ValueError, match=r"model takes 64 features \(in_shape \(1, 8, 8\)\), got 784") as info:
        model(torch.rand(2, 1, 28, 28))
    _one_line(info)
    model(torch.rand(2, 64))  # any shape with 64 values per example


def test_torch_only_training_options_are_refused_for_sklearn_models() -> None:
    with pytest.raises(ValueError, match="model 'sklearn-tree' is fitted by scikit-learn and takes no training "
                                         "recipe") as info:
        train_model("sklearn-tree", "digits", Recipe(epochs=1, lr=0.1))
    _one_line(info)
    with pytest.raises(ValueError, match=r"unknown fitting option\(s\) \['max_depht'\]; it takes: max_depth"):
        train_model("sklearn-tree", "digits", model_options={"max_depht": 3})
    with pytest.raises(TypeError, match="max_depth must be an integer"):
        train_model("sklearn-tree", "digits", model_options={"max_depth": 2.5})
    with pytest.raises(ValueError, match="holds 2 of the 10 classes"):
        train_model("sklearn-knn", "digits", n_train=2)
    for args, message in (
        (["--model", "sklearn-svm-rbf", "--epochs", "3"], "model 'sklearn-svm-rbf' is fitted by scikit-learn and "
                                                          "takes no training-recipe options (--epochs)"),
        (["--model", "sklearn-tree", "--C", "1"], "model 'sklearn-tree' does not take --C; it takes --max-depth"),
        (["--model", "cnn-small", "--n-neighbors", "3"], "--n-neighbors is a fitting option of scikit-learn models"),
        (["--model", "sklearn-knn", "--defense", "fgsm-at", "--eps", "0.3"], "--defense (adversarial training) "
                                                                              "needs a torch model"),
    ):
        result = CliRunner().invoke(cli, ["train", *args, "--out", "never-written"])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not Path("never-written").exists()


# --- attacks on the converted models ----------------------------------------------------------------------


def test_fgsm_on_logistic_regression_equals_the_closed_form() -> None:
    model = converted("logistic")
    x, y, eps = XT[:64], YT[:64], 0.1
    res = advlab.attacks.fgsm(model, x, y, eps=eps)
    w, b = (t.double() for t in model.net.linear_weights())
    xf = x.flatten(1).double()
    p = torch.softmax(xf @ w.T + b, dim=1)
    grad = (p - F.one_hot(y, 10).double()) @ w  # d CE / dx = sum_k (p_k - 1[k = y]) W_k
    expected = (xf + eps * grad.sign()).clamp(0, 1).float().view_as(x)
    got = res.x_adv[0]
    sure = grad.abs().view_as(x) > 1e-5  # coordinates whose gradient sign float32 cannot flip
    assert bool(sure.float().mean() > 0.5)
    assert torch.allclose(got[sure], expected[sure], atol=1e-6)
    assert float((got - x).abs().max()) <= eps + 1e-6 and bool((got >= 0).all() and (got <= 1).all())


def test_pgd_fools_the_rbf_svm_at_eps_03() -> None:
    model = converted("svm-rbf")
    pred = scores(model, XT[:100]).argmax(1)
    keep = pred == YT[:100]
    x, y = XT[:100][keep], YT[:100][keep]
    res = advlab.attacks.pgd(model, x, y, eps=0.3, steps=20, generator=torch.Generator().manual_seed(0))
    success = float(res.success[0].float().mean())
    assert success >= 0.9, success
    delta = res.x_adv[0] - x
    assert float(delta.abs().max()) <= 0.3 + 1e-6 and bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    again = scores(model, res.x_adv[0]).argmax(1)
    assert torch.equal(again != y, res.success[0])
