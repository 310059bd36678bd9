"""Attacks on non-neural models: the exact tree attack, Papernot's tree attack, the kNN attack, weight_sign.

Also home of :func:`model_kinds` and :func:`kind_model`, with which the registry-driven attack tests build a
model of the kind an attack needs (its registered ``models``) instead of their neural default.
"""

from __future__ import annotations

import copy
import functools
import itertools

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

import advlab
from advlab.attacks import attack_spec, fgm, fgsm, knn, pgd, tree, tree_papernot, weight_sign
from advlab.attacks._tree import float_interval, papernot_targets
from advlab.data import load_dataset
from advlab.models import Classifier, from_sklearn
from advlab.threat import lp_norm

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- models of a kind, for any attack test


def model_kinds(name: str) -> tuple[str, ...]:
    """The kinds of model the registered attack ``name`` needs (``()``: any model returning logits)."""
    return attack_spec(name).models


def _estimator(kind: str) -> object:
    if kind == "tree":
        return DecisionTreeClassifier(random_state=0)
    if kind == "knn":
        return KNeighborsClassifier(3)
    if kind == "linear":
        return LogisticRegression(max_iter=300)
    raise ValueError(f"no test model of kind {kind!r}")


@functools.cache
def _fitted(kind: str, shape: tuple[int, ...], classes: int, bounds: tuple[float, float], data: str) -> Classifier:
    if data == "digits":  # both splits: the test points are then classified correctly, as attack tests want
        x, y = (torch.cat(pair) for pair in zip(load_dataset("digits", "train"), load_dataset("digits", "test"),
                                                strict=True))
    else:  # random inputs within the bounds, every class present
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(120, *shape, generator=gen) * (bounds[1] - bounds[0]) + bounds[0]
        y = torch.randperm(120, generator=gen) % classes
    est = _estimator(kind)
    est.fit(x.flatten(1).numpy(), y.numpy())  # type: ignore[attr-defined]
    return from_sklearn(est, in_shape=tuple(x.shape[1:]), bounds=bounds)


def kind_model(kind: str, shape: tuple[int, ...] = (1, 8, 8), classes: int = 10,
               bounds: tuple[float, float] = (0.0, 1.0), data: str = "random") -> Classifier:
    """A fresh copy of a small scikit-learn model of ``kind`` (``tree``, ``knn``, ``linear``) for inputs of
    ``shape`` within ``bounds``, fitted on random labelled inputs (``data="random"``) or on both splits of
    the digits (``data="digits"``)."""
    return copy.deepcopy(_fitted(kind, tuple(shape), classes, tuple(bounds), data))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "train")
    xt, yt = load_dataset("digits", "test")
    return x, y, xt, yt


@pytest.fixture(scope="module")
def digits_tree(digits: tuple[torch.Tensor, ...]) -> tuple[Classifier, DecisionTreeClassifier]:
    x, y, _, _ = digits
    est = DecisionTreeClassifier(random_state=0).fit(x.flatten(1).numpy(), y.numpy())
    return from_sklearn(est, in_shape=(1, 8, 8)), est


def _inside(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float, bounds: tuple[float, float]) -> bool:
    within = bool((lp_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    return within and float(x_adv.min()) >= bounds[0] and float(x_adv.max()) <= bounds[1]


# ---------------------------------------------------------------- the exact tree attack


def _brute_force(est: DecisionTreeClassifier, x: np.ndarray, y: int, norm: str, bounds: tuple[float, float],
                 targeted: bool) -> float:
    """The exact minimum by exhaustion: for a box, the nearest point takes, per feature, ``x_f`` or an end of
    the feature's interval, so the optimum lies on the grid of ``x_f``, the float32 values just around every
    threshold and the bounds; every grid point is classified by scikit-learn itself."""
    t = est.tree_
    axes = []
    for f in range(x.shape[0]):
        thr = t.threshold[t.feature == f].astype(np.float64)
        near = [np.float32(v) for v in thr]
        near += [np.nextafter(v, np.float32(np.inf)) for v in near] + [np.nextafter(v, np.float32(-np.inf))
                                                                      for v in near]
        axis = np.array([x[f], *bounds, *near], dtype=np.float32)
        axes.append(np.unique(axis[(axis >= bounds[0]) & (axis <= bounds[1])]))
    grid = np.array(list(itertools.product(*axes)), dtype=np.float32)
    pred = est.predict(grid)
    adv = grid[pred == y] if targeted else grid[pred != y]
    if len(adv) == 0:
        return float("inf")
    delta = torch.from_numpy(adv - x[None, :].astype(np.float32))
    return float(lp_norm(delta, norm).min())


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["l0", "linf", "l2", "l1"])
def test_tree_attack_finds_the_exact_minimum(norm: str, targeted: bool) -> None:
    """On a small tree over 3 features the attack's distance equals the brute-force minimum, example by example."""
    gen = np.random.default_rng(0)
    xs = gen.random((300, 3)).astype(np.float32)
    ys = (xs[:, 0] + 2 * xs[:, 1] * xs[:, 2] > 0.9).astype(int) + (xs[:, 2] > 0.7)
    est = DecisionTreeClassifier(max_leaf_nodes=14, random_state=0).fit(xs, ys)
    model = from_sklearn(est)
    x = torch.from_numpy(gen.random((12, 3)).astype(np.float32)).reshape(12, 1, 1, 3)
    y = torch.from_numpy(est.predict(x.flatten(1).numpy()))
    labels = (y + 1) % 3 if targeted else y
    big = {"l0": 3.0, "linf": 1.0, "l2": 2.0, "l1": 3.0}[norm]
    r = tree(model, x, labels, eps=big, norm=norm, targeted=targeted, true_labels=y if targeted else None)
    assert bool(r.success.all())
    assert bool((est.predict(r.x_adv[0].flatten(1).numpy()) == labels.numpy()).all() if targeted
                else (est.predict(r.x_adv[0].flatten(1).numpy()) != y.numpy()).all())
    for i in range(12):
        exact = _brute_force(est, x[i].flatten().numpy(), int(labels[i]), norm, (0.0, 1.0), targeted)
        assert float(r.distances[0, i]) == pytest.approx(exact, rel=1e-5, abs=1e-6), (i, norm)


def test_tree_attack_breaks_every_digit_with_a_few_pixels(
    digits: tuple[torch.Tensor, ...], digits_tree: tuple[Classifier, DecisionTreeClassifier]
) -> None:
    """Unbounded budgets: 100 % success (untargeted and targeted), inside the ball and the bounds, and
    scikit-learn agrees; every budget below an example's minimum fails it, every budget above succeeds."""
    _, _, xt, yt = digits
    model, est = digits_tree
    x, y = xt[:100], yt[:100]
    for norm, eps in (("l0", 64.0), ("linf", 1.0)):
        r = tree(model, x, y, eps=eps, norm=norm)
        assert bool(r.success.all()) and _inside(x, r.x_adv[0], norm, eps, (0.0, 1.0))
        assert bool((est.predict(r.x_adv[0].flatten(1).numpy()) != y.numpy()).all())
        assert float(r.distances[0].median()) <= (3 if norm == "l0" else 0.1)
    r = tree(model, x, y, eps=[1.0, 2.0, 3.0, 64.0])
    minimum = r.distances[-1]
    for i, e in enumerate(r.eps):
        assert torch.equal(r.success[i], minimum <= e)
    targets = (y + 3) % 10
    t = tree(model, x, targets, eps=64, targeted=True, true_labels=y)
    assert bool((t.adv_pred[0] == targets).all())


def test_papernot_succeeds_and_the_exact_attack_never_needs_more_pixels(
    digits: tuple[torch.Tensor, ...], digits_tree: tuple[Classifier, DecisionTreeClassifier]
) -> None:
    _, _, xt, yt = digits
    model, _ = digits_tree
    x, y = xt[:150], yt[:150]
    p = tree_papernot(model, x, y, eps=64)
    assert float(p.success.float().mean()) >= 0.9 and _inside(x, p.x_adv[0], "l0", 64, (0.0, 1.0))
    exact = tree(model, x, y, eps=64)
    both = p.success[0] & exact.success[0]
    assert bool((exact.distances[0][both] <= p.distances[0][both]).all())
    targets = (y + 5) % 10
    tp = tree_papernot(model, x, targets, eps=64, targeted=True)
    assert float(tp.success.float().mean()) >= 0.9
    assert torch.equal(tp.adv_pred[0][tp.success[0]], targets[tp.success[0]])


def test_papernot_follows_the_nearest_branch_of_a_hand_built_tree() -> None:
    """Root: x0 <= 0.5; left: x1 <= 0.5 -> leaves A (class 0), B (class 1); right: leaf C (class 2). From A,
    another class is found one level up (B: change x1); class 2 only at the root's other side (C: change x0)."""
    x = np.array([[0.1, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.9], [0.2, 0.3], [0.3, 0.8], [0.7, 0.5]], np.float32)
    y = np.array([0, 1, 2, 2, 0, 1, 2])
    est = DecisionTreeClassifier(random_state=0).fit(x, y)
    model = from_sklearn(est)
    net = model.net
    avoid, reach = papernot_targets(net)
    leaf_a = int(net.apply(torch.tensor([[0.1, 0.1]])))
    leaf_b = int(net.apply(torch.tensor([[0.1, 0.9]])))
    leaf_c = int(net.apply(torch.tensor([[0.9, 0.1]])))
    assert avoid[leaf_a, 0] == leaf_b and reach[leaf_a, 2] == leaf_c and reach[leaf_a, 1] == leaf_b
    r = tree_papernot(model, torch.tensor([[0.1, 0.1]]).reshape(1, 1, 1, 2), torch.tensor([0]), eps=2, offset=0.01)
    changed = (r.x_adv[0] != torch.tensor([[0.1, 0.1]]).reshape(1, 1, 1, 2)).flatten()
    assert changed.tolist() == [False, True] and bool(r.success.all())
    threshold = float(est.tree_.threshold[est.tree_.feature == 1][0])
    assert float(r.x_adv[0].flatten()[1]) == pytest.approx(threshold + 0.01, abs=1e-6)


def test_tree_bounds_and_float32_rule() -> None:
    """The interval of a leaf holds the float32 values strictly above its lower end (scikit-learn goes right
    iff ``x > threshold``) and is cut to the bounds."""
    lower = torch.tensor([0.25, -torch.inf], dtype=torch.float64)
    upper = torch.tensor([0.75, 0.1], dtype=torch.float64)
    a, b = float_interval(lower, upper, torch.float32, (0.0, 1.0))
    assert float(a[0]) > 0.25 and float(a[0]) == float(np.nextafter(np.float32(0.25), np.float32(1)))
    assert float(b[0]) == 0.75 and float(a[1]) == 0.0 and float(b[1]) <= 0.1


def test_tree_attacks_refuse_other_models(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, xt, yt = digits
    forest = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(x.flatten(1).numpy(), y.numpy())
    with pytest.raises(TypeError, match=r"forest.*tree_papernot.*transfer"):
        tree(from_sklearn(forest, in_shape=(1, 8, 8)), xt[:2], yt[:2], eps=4)
    cnn = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
    for attack in (tree, tree_papernot):
        with pytest.raises(TypeError, match="'tree' models"):
            attack(cnn, xt[:2], yt[:2], eps=4)
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x.flatten(1).numpy(), y.numpy())
    normalised = Classifier(from_sklearn(est, in_shape=(1, 8, 8)).net, mean=[0.5], std=[0.2])
    with pytest.raises(ValueError, match="normalises"):
        tree(normalised, xt[:2], yt[:2], eps=4)


# ---------------------------------------------------------------- kNN


@pytest.fixture(scope="module")
def digits_linear(digits: tuple[torch.Tensor, ...]) -> Classifier:
    x, y, _, _ = digits
    return from_sklearn(LogisticRegression(max_iter=300).fit(x.flatten(1).numpy(), y.numpy()), in_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def digits_knn(digits: tuple[torch.Tensor, ...]) -> Classifier:
    x, y, _, _ = digits
    return from_sklearn(KNeighborsClassifier(5).fit(x.flatten(1).numpy(), y.numpy()), in_shape=(1, 8, 8))


@pytest.mark.parametrize(("norm", "eps"), [("l2", 1.0), ("linf", 0.2)])
def test_knn_attack_beats_transfer_from_a_linear_surrogate(norm: str, eps: float, digits: tuple[torch.Tensor, ...],
                                                          digits_knn: Classifier, digits_linear: Classifier) -> None:
    """White-box kNN attack vs PGD and FGSM transferred from logistic regression at the same budget."""
    _, _, xt, yt = digits
    xs, ys, surrogate = xt[:100], yt[:100], digits_linear
    r = knn(digits_knn, xs, ys, eps=eps, norm=norm)
    assert _inside(xs, r.x_adv[0], norm, eps, (0.0, 1.0))
    with torch.no_grad():
        truth = digits_knn(r.x_adv[0]).argmax(1) != ys
    assert torch.equal(truth, r.success[0])
    rate = float(r.success.float().mean())
    for attack in (pgd, fgsm if norm == "linf" else fgm):
        kw = {"steps": 20} if attack is pgd else {}
        moved = attack(surrogate, xs, ys, eps=eps, norm=norm, generator=torch.Generator().manual_seed(0), **kw)
        with torch.no_grad():
            transfer = float((digits_knn(moved.x_adv[0]).argmax(1) != ys).float().mean())
        assert rate >= transfer + 0.1, (attack.__name__, rate, transfer)


def test_knn_attack_reaches_targets_and_its_radius_is_minimal_along_its_path(
    digits: tuple[torch.Tensor, ...], digits_knn: Classifier
) -> None:
    _, _, xt, yt = digits
    xs, ys = xt[:40], yt[:40]
    targets = (ys + 1) % 10
    r = knn(digits_knn, xs, targets, eps=[0.5, 6.0], targeted=True, true_labels=ys)
    assert float(r.success_rate[1]) >= 0.9
    assert torch.equal(r.adv_pred[1][r.success[1]], targets[r.success[1]])
    # a min-norm attack: a budget just below the radius found fails (bisection precision 2**-12 of the path)
    u = knn(digits_knn, xs, ys, eps=8.0)
    assert bool(u.success.all())
    below = knn(digits_knn, xs, ys, eps=[float(d) * 0.97 for d in u.distances[0][:1]])
    assert not bool(below.success[0, 0])


def test_knn_refuses_other_models(digits: tuple[torch.Tensor, ...], digits_tree: tuple[Classifier, object]) -> None:
    _, _, xt, yt = digits
    with pytest.raises(TypeError, match="'knn' models"):
        knn(digits_tree[0], xt[:2], yt[:2], eps=1.0)


# ---------------------------------------------------------------- weight_sign


def test_weight_sign_equals_its_closed_form(digits: tuple[torch.Tensor, ...], digits_linear: Classifier) -> None:
    _, _, xt, yt = digits
    x, y = xt[:50], yt[:50]
    w, _ = digits_linear.net.linear_weights()
    targets = (y + 4) % 10
    r = weight_sign(digits_linear, x, targets, eps=[0.05, 0.2], targeted=True, true_labels=y)
    for i, eps in enumerate((0.05, 0.2)):
        expected = (x.flatten(1) + eps * torch.sign(w[targets] - w[y])).clamp(0, 1).reshape(x.shape)
        assert torch.equal(r.x_adv[i], expected)
    assert float(r.success_rate[1]) > float(r.success_rate[0])


def test_weight_sign_untargeted_choice_is_the_best_sign_step(digits: tuple[torch.Tensor, ...],
                                                             digits_linear: Classifier) -> None:
    _, _, xt, yt = digits
    x, y = xt[:60], yt[:60]
    w, _ = digits_linear.net.linear_weights()
    eps = 0.15
    r = weight_sign(digits_linear, x, y, eps=eps)
    with torch.no_grad():
        margins = []
        for t in range(10):
            cand = (x.flatten(1) + eps * torch.sign(w[t] - w[y])).clamp(0, 1).reshape(x.shape)
            z = digits_linear(cand)
            m = z.scatter(1, y[:, None], -torch.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)
            margins.append(torch.where(y == t, -torch.inf, m))
        best = torch.stack(margins, 1).amax(1)
        z = digits_linear(r.x_adv[0])
        got = z.scatter(1, y[:, None], -torch.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-5)
    assert _inside(x, r.x_adv[0], "linf", eps, (0.0, 1.0))
    assert float(r.success_rate[0]) > 0.5


def test_weight_sign_on_a_normalising_softmax_network() -> None:
    """The zoo's softmax regression with normalisation inside: the step follows the raw-input weights."""
    model = advlab.create_model("softmax", in_shape=(1, 4, 4), num_classes=3, mean=[0.4], std=[0.25],
                                generator=torch.Generator().manual_seed(0))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 3
    r = weight_sign(model, x, (y + 1) % 3, eps=0.1, targeted=True, true_labels=y)
    w = model.net[1].weight.detach() / 0.25
    expected = (x.flatten(1) + 0.1 * torch.sign(w[(y + 1) % 3] - w[y])).clamp(0, 1).reshape(x.shape)
    assert torch.equal(r.x_adv[0], expected)
    # the folded weights reproduce the network's logits
    from advlab.attacks._linear import linear_weights

    wf, bf = linear_weights(model, x)
    with torch.no_grad():
        torch.testing.assert_close(x.flatten(1) @ wf.T + bf, model(x), rtol=1e-5, atol=1e-5)


def test_weight_sign_refuses_a_non_linear_model() -> None:
    mlp = advlab.create_model("mlp", in_shape=(1, 4, 4), num_classes=3, hidden=(8,))
    with pytest.raises(TypeError, match=r"linear model.*fgsm or pgd"):
        weight_sign(mlp, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), eps=0.1)
