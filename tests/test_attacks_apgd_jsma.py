"""APGD and JSMA: step-size checkpoints, closed forms on linear models, the pair search against brute force,
and behaviour on a small trained MNIST CNN."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from advlab.attacks import AttackResult, apgd, jsma, pgd
from advlab.attacks import _apgd as apgd_module
from advlab.attacks import _jsma as jsma_module
from advlab.models.classifier import Classifier
from advlab.threat import random_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_binary(d: int = 12, seed: int = 0) -> tuple[Classifier, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
    return Classifier(nn.Sequential(nn.Flatten(), lin), bounds=(-100.0, 100.0)), w


# ---------------------------------------------------------------- APGD


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: w_j = ceil(p_j * steps)
    assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    marks = apgd_module.checkpoints(1000)
    gaps = [b - a for a, b in itertools.pairwise([0, *marks])]
    assert gaps[0] == 220 and min(gaps) >= 60 and gaps == sorted(gaps, reverse=True)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_linear_model_reaches_the_optimal_corner(norm: str) -> None:
    """On a linear model the loss is maximised by the steepest step of length eps away from the boundary."""
    model, w = _linear_binary()
    g = torch.Generator().manual_seed(1)
    eps = 0.05 if norm == "linf" else 0.2
    x = torch.randn(64, 1, 1, 12, generator=g)
    reach = eps * (w.abs().sum() if norm == "linf" else w.norm())  # the most the margin can move
    margin = (x.flatten(1) @ w).abs()
    x = x[(margin > 2 * reach) & (margin < 8)]  # the budget cannot flip them; float32 CE is not flat there
    y = model(x).argmax(dim=1)
    assert x.shape[0] >= 16
    r = apgd(model, x, y, eps=eps, norm=norm, steps=10, generator=torch.Generator().manual_seed(0))
    toward = torch.where(y == 1, -1.0, 1.0)[:, None] * w  # direction that lowers the true class's margin
    step = toward.sign() * eps if norm == "linf" else toward / toward.norm(dim=1, keepdim=True) * eps
    delta = r.x_adv[0].flatten(1) - x.flatten(1)
    if norm == "linf":
        torch.testing.assert_close(delta, step, rtol=0, atol=1e-6)
    else:  # reached along the sphere from a random start: check the gain in margin, within 0.1%
        gain = (delta * toward).sum(dim=1) / (step * toward).sum(dim=1)
        assert bool((gain > 0.999).all()) and bool((gain <= 1 + 1e-5).all())


def test_apgd_rejects_bad_options() -> None:
    model, _ = _linear_binary()
    x = torch.zeros(2, 1, 1, 12)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="rho must be <= 1"):
        apgd(model, x, y, eps=0.1, rho=1.5)
    with pytest.raises(ValueError, match="restarts must be an integer"):
        apgd(model, x, y, eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes"):
        apgd(model, x, y, eps=0.1, loss="dlr")


@pytest.fixture(scope="module")
def mnist_points(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_test
    return x[:200], y[:200]


@pytest.fixture(scope="module")
def pgd_baseline(mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]) -> AttackResult:
    x, y = mnist_points
    return pgd(mnist_cnn, x, y, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_at_least_as_strong_as_pgd(
    mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor], pgd_baseline: AttackResult, loss: str
) -> None:
    """Same budget, same number of gradient steps (PGD with Madry et al.'s step 2.5 eps / steps)."""
    x, y = mnist_points
    base = pgd_baseline
    auto = apgd(mnist_cnn, x, y, eps=0.1, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))
    assert auto.n_backward <= base.n_backward
    clean = float(auto.clean_correct.float().mean())
    assert float(auto.robust_accuracy[0]) < clean - 0.05  # the attack does something
    assert float(auto.robust_accuracy[0]) <= float(base.robust_accuracy[0]) + 0.02


@pytest.mark.slow
def test_targeted_apgd_dlr_reaches_targets(
    mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = (t[:64] for t in mnist_points)
    targets = random_targets(y, 10, torch.Generator().manual_seed(1))
    r = apgd(mnist_cnn, x, targets, eps=0.3, steps=20, loss="dlr", targeted=True, true_labels=y,
             generator=torch.Generator().manual_seed(0))
    assert float(r.success_rate[0]) >= 0.85
    assert bool((r.distances <= 0.3 + 1e-6).all())


# ---------------------------------------------------------------- JSMA


def test_pair_search_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    domain = torch.rand(5, 9, generator=g) < 0.7
    p, q, ok = jsma_module._best_pairs(a, b, domain)
    for i in range(5):
        best, arg = 0.0, None
        for s, t in itertools.permutations(range(9), 2):
            sa, sb = a[i, s] + a[i, t], b[i, s] + b[i, t]
            if domain[i, s] and domain[i, t] and sa > 0 and sb < 0 and -sa * sb > best:
                best, arg = float(-sa * sb), {s, t}
        assert bool(ok[i]) == (arg is not None)
        if arg is not None:
            assert {int(p[i]), int(q[i])} == arg


def test_jsma_changes_the_most_salient_pair_of_a_linear_model() -> None:
    """Softmax saliency on a linear model: the first pair is the two largest weights towards the target."""
    d = 10
    w = torch.tensor([0.1, 3.0, -2.0, 0.5, 2.5, 0.0, -1.0, 0.2, 0.3, 0.4])
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = -2.0  # class 0 at x = 0.2; one pair (features 1 and 4, +0.8 each) flips it
    model = Classifier(nn.Sequential(nn.Flatten(), lin))
    x = torch.full((1, 1, 1, d), 0.2)
    r = jsma(model, x, torch.tensor([1]), eps=d, targeted=True)
    changed = (r.x_adv[0] != x).flatten().nonzero().flatten().tolist()
    assert changed == [1, 4]
    assert bool(r.success.all()) and float(r.x_adv[0].flatten()[1]) == 1.0


def test_jsma_untargeted_with_negative_theta_lowers_the_right_pair() -> None:
    """Untargeted, theta = -1: the pair that most lowers the true class is set to the lower bound."""
    w = torch.tensor([0.1, 3.0, -2.0, 0.5, 2.5, 0.0, -1.0, 0.2, 0.3, 0.4])
    lin = nn.Linear(10, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0], lin.weight[1] = -w, w  # antisymmetric logits, so that both saliency maps are informative
        lin.bias[0], lin.bias[1] = 2.5, -2.5  # z1 - z0 = 2 w.x - 5 = -1 at x = 0.5; zeroing features 2, 6 adds 3
    model = Classifier(nn.Sequential(nn.Flatten(), lin))
    x = torch.full((1, 1, 1, 10), 0.5)
    for saliency in ("probs", "logits"):
        r = jsma(model, x, torch.tensor([0]), eps=10, theta=-1.0, saliency=saliency)
        assert (r.x_adv[0] != x).flatten().nonzero().flatten().tolist() == [2, 6]
        assert bool(r.success.all()) and float(r.x_adv[0].flatten()[2]) == 0.0


def test_jsma_rejects_bad_options() -> None:
    model, _ = _linear_binary()
    x, y = torch.zeros(2, 1, 1, 12), torch.tensor([0, 1])
    for kwargs, match in [({"theta": 0.0}, "theta must be"), ({"theta": 1.5}, "theta must be <= 1"),
                          ({"saliency": "hessian"}, "unknown saliency")]:
        with pytest.raises(ValueError, match=match):
            jsma(model, x, y, eps=6, **kwargs)
    with pytest.raises(ValueError, match="unknown norm 'linf'; expected one of l0"):
        jsma(model, x, y, eps=6, norm="linf")


def test_jsma_budgets_keep_the_largest_changes() -> None:
    """Several L0 budgets from one run: each keeps at most eps changed features of the largest run."""
    model, _ = _linear_binary()
    x, y = torch.full((2, 1, 1, 12), 0.5), torch.tensor([0, 1])
    r = jsma(model, x, y, eps=[2, 4, 12])
    assert r.distances.max(dim=1).values.tolist() <= [2.0, 4.0, 12.0]
    changed = [(r.x_adv[i] != x).flatten(1) for i in range(3)]
    assert bool((changed[0] <= changed[2]).all()) and bool((changed[1] <= changed[2]).all())


@pytest.mark.slow
@pytest.mark.parametrize("saliency", ["probs", "logits"])
def test_jsma_targeted_on_mnist(
    mnist_cnn: nn.Module, mnist_points: tuple[torch.Tensor, torch.Tensor], saliency: str
) -> None:
    n = 64 if saliency == "probs" else 24  # the logits variant searches all (d, d) pairs: slower
    x, y = (t[:n] for t in mnist_points)
    targets = random_targets(y, 10, torch.Generator().manual_seed(2))
    r = jsma(mnist_cnn, x, targets, eps=78, targeted=True, true_labels=y, saliency=saliency)
    changed = (r.x_adv[0] != x).flatten(1).sum(dim=1)
    assert int(changed.max()) <= 78  # the L0 budget, 10% of the pixels
    torch.testing.assert_close(r.distances[0], changed.float())
    assert bool((r.x_adv[0][r.x_adv[0] != x] == 1.0).all())  # theta = 1: changed pixels go to the top
    # JSMA-F (softmax) is the strong default; JSMA-Z (logits) is weaker on this model.
    assert float(r.success_rate[0]) >= (0.8 if saliency == "probs" else 0.5)
    assert float(changed[r.success[0]].float().mean()) < 0.08 * 784
