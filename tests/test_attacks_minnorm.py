"""Minimum-norm attacks (DeepFool, C&W L2) and the C&W margin-loss L∞ attack: closed forms on linear models,
budgets filled from one run, and behaviour on a small trained MNIST CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import cw, cw_linf, deepfool, pgd
from advlab.models.classifier import Classifier
from advlab.threat import random_targets


def _linear_binary(
    d: int = 20, bounds: tuple[float, float] = (-100.0, 100.0), seed: int = 0
) -> tuple[Classifier, torch.Tensor, float]:
    """A 2-logit model with ``z1 - z0 = w.x + b``; returns (model, w, b)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    b = 0.3
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = b
    return Classifier(nn.Sequential(nn.Flatten(), lin), bounds=bounds), w, b


def _points(model: Classifier, n: int, d: int, scale: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 1, d, generator=g) * 2 - 1) * scale
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return x, y


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2.0), ("linf", 1.0)])
def test_deepfool_linear_binary_closed_form(norm: str, dual: float) -> None:
    model, w, b = _linear_binary()
    x, y = _points(model, 32, 20, 3.0)
    overshoot = 1e-4
    r = deepfool(model, x, y, eps=1e3, norm=norm, overshoot=overshoot)
    margin = (x.flatten(1) @ w + b).abs()
    distance = margin / w.norm(p=dual)
    assert bool(r.success.all())
    # DeepFool steps (|f| + 1e-4) / ||w||_dual: the exact distance plus a push of 1e-4 / ||w||_dual.
    expected = (margin + 1e-4) / w.norm(p=dual) * (1 + overshoot)
    torch.testing.assert_close(r.distances[0], expected, rtol=1e-4, atol=1e-6)
    assert bool((r.distances[0] - distance).abs().max() < 2e-4 * distance.max() + 1e-4 / float(w.norm(p=dual)))
    # One linearisation step lands on the boundary of a linear model: one backward per example.
    assert r.n_backward == x.shape[0]


def test_deepfool_default_overshoot_scales_the_step() -> None:
    """With the default overshoot (0.02) the point reported is 1.02 times the linearised step, exactly."""
    model, w, b = _linear_binary()
    x, y = _points(model, 16, 20, 3.0)
    r = deepfool(model, x, y, eps=1e3)
    expected = ((x.flatten(1) @ w + b).abs() + 1e-4) / w.norm() * 1.02
    torch.testing.assert_close(r.distances[0], expected, rtol=1e-5, atol=1e-7)


def test_deepfool_budgets_from_one_run() -> None:
    model, _, _ = _linear_binary(d=10, seed=3)
    x, y = _points(model, 64, 10, 3.0, seed=4)
    budgets = [0.5, 1.0, 2.0, 5.0]
    many = deepfool(model, x, y, eps=budgets)
    one = deepfool(model, x, y, eps=5.0)
    assert many.n_backward == one.n_backward
    assert bool((many.distances <= torch.tensor(budgets)[:, None] * (1 + 1e-5)).all())
    rates = many.success_rate
    assert bool((rates[1:] >= rates[:-1]).all()) and rates[0] < rates[-1]
    assert torch.equal(many.success[-1], one.success[0])


def test_deepfool_is_untargeted_only() -> None:
    model, _, _ = _linear_binary()
    x, y = _points(model, 4, 20, 1.0)
    with pytest.raises(ValueError, match="untargeted"):
        deepfool(model, x, y, eps=1.0, targeted=True)


def test_cw_l2_linear_binary_near_optimum() -> None:
    # Inputs in [0, 1] around a boundary through the middle of the box, so the optimum lies inside the box.
    d = 20
    g = torch.Generator().manual_seed(5)
    w = torch.randn(d, generator=g)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = -0.5 * w.sum()
    model = Classifier(nn.Sequential(nn.Flatten(), lin))
    x = 0.5 + (torch.rand(32, 1, 1, d, generator=g) * 2 - 1) * 0.15
    y = model(x).argmax(dim=1)
    f = (x.flatten(1) - 0.5) @ w
    optimum = f.abs() / w.norm()
    nearest = x.flatten(1) - (f / w.norm() ** 2)[:, None] * w
    assert bool(((nearest >= 0) & (nearest <= 1)).all())
    quick = cw(model, x, y, eps=10.0)  # defaults: 4 rounds of 20 steps
    r = cw(model, x, y, eps=10.0, steps=50, binary_search_steps=5)
    for result in (quick, r):
        assert bool(result.success.all())
        assert bool((result.distances[0] >= optimum * (1 - 1e-4)).all())  # nothing adversarial is closer
    assert float((quick.distances[0] / optimum).median()) < 1.2
    ratio = r.distances[0] / optimum
    assert float(ratio.median()) < 1.06
    assert float(ratio.max()) < 1.25


def test_cw_rejects_bad_hyperparameters() -> None:
    model, _, _ = _linear_binary()
    x, y = _points(model, 4, 20, 1.0)
    with pytest.raises(ValueError, match="binary_search_steps"):
        cw(model, x, y, eps=1.0, binary_search_steps=0)
    with pytest.raises(ValueError, match="confidence"):
        cw(model, x, y, eps=1.0, confidence=-1.0)


def test_cw_confidence_on_linear_model() -> None:
    """With confidence κ the optimum is the point where the margin reaches κ: distance (|f| + κ) / ||w||."""
    d, kappa = 20, 1.0
    g = torch.Generator().manual_seed(7)
    w = torch.randn(d, generator=g)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = -0.5 * w.sum()
    model = Classifier(nn.Sequential(nn.Flatten(), lin))
    x = 0.5 + (torch.rand(16, 1, 1, d, generator=g) * 2 - 1) * 0.1
    y = model(x).argmax(dim=1)
    optimum = (((x.flatten(1) - 0.5) @ w).abs() + kappa) / w.norm()
    r = cw(model, x, y, eps=10.0, confidence=kappa, steps=50)
    assert bool(r.success.all())
    with torch.no_grad():
        logits = model(r.x_adv[0])
    margin = logits.gather(1, (1 - y)[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    assert bool((margin >= kappa - 1e-4).all())
    ratio = r.distances[0] / optimum
    assert bool((ratio >= 1 - 1e-4).all()) and float(ratio.median()) < 1.06


# ---------------------------------------------------------------- a small trained MNIST CNN


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist_points(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_test
    return x[:100], y[:100]


@pytest.mark.slow
def test_deepfool_fills_every_budget_from_one_run_on_mnist(
    mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = (t[:48] for t in mnist_points)
    budgets = [0.5, 1.0, 2.0, 5.0]
    many = deepfool(mnist_cnn, x, y, eps=budgets)
    one = deepfool(mnist_cnn, x, y, eps=5.0)
    assert many.n_backward == one.n_backward and many.n_backward > 0
    assert bool((many.distances <= torch.tensor(budgets)[:, None] * (1 + 1e-5)).all())
    rates = many.success_rate
    assert bool((rates[1:] >= rates[:-1]).all())
    assert float(rates[-1]) >= 0.95 and float(rates[0]) < float(rates[-1])
    assert float(many.robust_accuracy[0]) <= float(many.clean_correct.float().mean())


@pytest.mark.slow
def test_cw_beats_deepfool_on_mnist(mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = (t[:32] for t in mnist_points)
    fool = deepfool(mnist_cnn, x, y, eps=10.0)
    carlini = cw(mnist_cnn, x, y, eps=10.0)  # the defaults: 4 rounds of 20 steps
    ok = carlini.success[0] & carlini.clean_correct
    assert float(ok.sum()) >= 0.95 * float(carlini.clean_correct.sum())
    both = ok & fool.success[0]
    # DeepFool stops just past a linearised boundary; C&W optimises the norm itself (about 5 % smaller here).
    assert float(carlini.distances[0][both].median()) < 0.98 * float(fool.distances[0][both].median())
    assert carlini.n_backward <= 80 * x.shape[0]


@pytest.mark.slow
def test_targeted_cw_reaches_targets_on_mnist(
    mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = (t[:24] for t in mnist_points)
    targets = random_targets(y, 10, torch.Generator().manual_seed(3))
    r = cw(mnist_cnn, x, targets, eps=[1.0, 10.0], targeted=True, true_labels=y)
    assert float(r.success_rate[1]) >= 0.95
    assert float(r.success_rate[0]) <= float(r.success_rate[1])
    with torch.no_grad():
        assert bool((mnist_cnn(r.x_adv[1]).argmax(dim=1) == targets)[r.success[1]].all())


@pytest.mark.slow
def test_cw_linf_on_mnist(mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = (t[:64] for t in mnist_points)
    margin = cw_linf(mnist_cnn, x, y, eps=0.15, steps=10, generator=torch.Generator().manual_seed(0))
    base = pgd(mnist_cnn, x, y, eps=0.15, steps=10, generator=torch.Generator().manual_seed(0))
    assert bool((margin.distances <= 0.15 + 1e-6).all())
    acc = float(margin.robust_accuracy[0])
    assert acc < float(margin.clean_correct.float().mean()) - 0.2
    assert acc <= float(base.robust_accuracy[0]) + 0.08
