"""The active test (binarization test of Zimmermann et al., NeurIPS 2022; advlab.evaluate._active): the
binarised model provably has an adversarial example inside the budget (checked for every valid point); a
real suite finds it, a deliberately weak one does not and fails the test; masked gradients fail it until the
matching adaptive attack is used."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.defenses.wrappers import Defended, Quantize
from advlab.evaluate._active import (
    N_INNER,
    PAD_MARGIN,
    Binarised,
    active_test,
    binarization_test,
    last_linear,
    model_features,
)
from advlab.evaluate._checks import run_checks
from advlab.evaluate._suites import Suite, SuiteAttack
from advlab.threat import lp_norm


@pytest.fixture(scope="module")
def digits_test() -> tuple[Tensor, Tensor]:
    return advlab.load_dataset("digits", "test")


def weak_suite(eps: float) -> Suite:
    """One PGD step of a tenth of the budget from the clean point: an evaluation that cannot be trusted."""
    return Suite("weak", (SuiteAttack("pgd", {"steps": 1, "step_size": eps / 10, "random_start": False}),))


def assert_provable(result, eps: float, norm: str) -> None:
    """Every valid point's boundary point is inside the ball and the bounds and classified 1 by the binarised
    model, whose anchors are classified 0; every passing point's x_adv too."""
    assert result.binarised is not None and result.anchors is not None and result.boundary is not None
    model, anchors, boundary = result.binarised, result.anchors, result.boundary
    assert anchors.shape[0] == boundary.shape[0] == result.n_valid
    dist = lp_norm(boundary - anchors, norm)
    assert bool((dist <= eps * (1 + 1e-5)).all()) and bool((dist > 0.5 * eps).all())
    assert float(boundary.min()) >= 0.0 and float(boundary.max()) <= 1.0
    with torch.no_grad():
        assert bool((model(boundary).argmax(1) == 1).all())
        assert bool((model(anchors).argmax(1) == 0).all())
        passed = torch.tensor([s == "passed" for s, i in zip(result.statuses, result.indices, strict=True)
                               if s != "invalid"])
        if bool(passed.any()):
            adv = result.x_adv[passed]
            assert bool((model(adv).argmax(1) == 1).all())
            assert bool((lp_norm(adv - anchors[passed], norm) <= eps * (1 + 1e-5) + 1e-6).all())


def test_quick_suite_passes_and_the_adversarial_example_provably_exists(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    x, y = digits_test
    eps = 0.1
    result = active_test(digits_cnn, x, y, norm="linf", eps=eps, suite="quick", n=20,
                         generator=torch.Generator().manual_seed(0))
    assert result.n_valid >= 18 and len(result.statuses) >= result.n_valid
    assert result.pass_rate >= result.threshold == 0.9 and result.reliable
    check = result.check()
    assert check.name == "active-test" and check.status == "pass" and f"{result.n_passed} of" in check.message
    assert_provable(result, eps, "linf")
    # the tested points are correctly classified ones, in order
    with torch.no_grad():
        assert bool((digits_cnn(x[result.indices]).argmax(1) == y[result.indices]).all())
    assert result.indices == sorted(result.indices)


def test_weak_suite_fails_the_active_test(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                          one_thread: None) -> None:
    x, y = digits_test
    eps = 0.1
    result = active_test(digits_cnn, x, y, norm="linf", eps=eps, suite=weak_suite(eps), n=20,
                         generator=torch.Generator().manual_seed(0))
    assert result.n_valid >= 18
    assert result.pass_rate < 0.5 and not result.reliable
    check = result.check()
    assert check.status == "fail" and check.fired and "unreliable" in check.message and check.advice
    assert_provable(result, eps, "linf")  # the example the weak suite missed does exist


def test_l2_quick_suite_passes(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None) -> None:
    x, y = digits_test
    result = active_test(digits_cnn, x, y, norm="l2", eps=1.0, suite="quick", n=12,
                         generator=torch.Generator().manual_seed(1))
    assert result.n_valid >= 10 and result.reliable, result.statuses
    assert_provable(result, 1.0, "l2")


def test_masked_gradients_fail_until_bpda(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                          one_thread: None) -> None:
    x, y = digits_test
    model = Defended(Quantize(4), digits_cnn)
    plain = active_test(model, x, y, norm="linf", eps=0.1, suite="quick", n=10,
                        generator=torch.Generator().manual_seed(0))
    assert plain.n_valid >= 8 and plain.check().status == "fail"
    adapted = active_test(model, x, y, norm="linf", eps=0.1, suite="quick", n=10, adaptive="bpda",
                          generator=torch.Generator().manual_seed(0))
    assert adapted.check().status == "pass", adapted.statuses


def test_core_with_an_oracle_and_a_null_attack(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                               one_thread: None) -> None:
    """An attack that returns the boundary point passes every valid point; one that returns the clean point
    passes none: the verdict is re-checked on what the attack returns."""
    x, y = digits_test
    boundary: dict[str, Tensor] = {}

    def null(model: nn.Module, xa: Tensor, labels: Tensor) -> Tensor:
        assert bool((labels == 0).all())
        return xa.clone()

    none = binarization_test(digits_cnn, x, y, norm="linf", eps=0.1, attack=null, suite_name="null", n=8,
                             generator=torch.Generator().manual_seed(0))
    assert none.n_valid >= 6 and none.n_passed == 0 and none.check().status == "fail"
    boundary["b"] = none.boundary  # type: ignore[assignment]

    def oracle(model: nn.Module, xa: Tensor, labels: Tensor) -> Tensor:
        return boundary["b"]

    full = binarization_test(digits_cnn, x, y, norm="linf", eps=0.1, attack=oracle, suite_name="oracle", n=8,
                             generator=torch.Generator().manual_seed(0))
    assert full.indices == none.indices and full.n_passed == full.n_valid == none.n_valid
    assert math.isclose(full.pass_rate, 1.0)


def test_binarised_model_routes_any_subset_and_has_four_logits(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    x, y = digits_test
    result = active_test(digits_cnn, x, y, norm="linf", eps=0.1, suite=weak_suite(0.1), n=6,
                         generator=torch.Generator().manual_seed(0))
    model, anchors, boundary = result.binarised, result.anchors, result.boundary
    assert isinstance(model, Binarised) and anchors is not None and boundary is not None
    points = torch.cat([anchors, boundary])
    with torch.no_grad():
        full = model(points)
        perm = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(3))
        sub = model(points[perm[:5]])
    assert full.shape == (points.shape[0], 4)
    assert torch.allclose(sub, full[perm[:5]], atol=1e-5)
    # the padding logits never win: PAD_MARGIN and twice that below the lower of the two others
    low = full[:, :2].amin(1)
    assert torch.allclose(full[:, 2], low - PAD_MARGIN) and torch.allclose(full[:, 3], low - 2 * PAD_MARGIN)
    # points inside an anchor's ball route to that anchor
    assert model.route(boundary).tolist() == list(range(anchors.shape[0]))
    # gradients flow through the chosen readout to the input
    xg = boundary.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert bool((g.flatten(1).abs().sum(1) > 0).all())


def test_features_and_validation(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor]) -> None:
    x, y = digits_test
    layer = last_linear(digits_cnn)
    assert isinstance(layer, nn.Linear)
    with torch.no_grad():
        feats = model_features(digits_cnn, x[:4], layer)
        logits = model_features(digits_cnn, x[:4], None)
    assert feats.shape == (4, layer.in_features) and torch.allclose(logits, digits_cnn(x[:4]))
    assert N_INNER >= 49
    with pytest.raises(ValueError, match="norm"):
        active_test(digits_cnn, x, y, norm="l1", eps=1.0)
    with pytest.raises(ValueError, match="eps"):
        active_test(digits_cnn, x, y, norm="linf", eps=0.0)
    with pytest.raises(ValueError, match="threshold"):
        active_test(digits_cnn, x, y, norm="linf", eps=0.1, threshold=1.5)


def test_run_checks_active_test(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None) -> None:
    from advlab.evaluate._robustness import robustness

    x, y = digits_test
    x, y = x[:40], y[:40]
    g = torch.Generator().manual_seed(0)
    ev = robustness(digits_cnn, x, y, eps=[0.1], suite=weak_suite(0.1), generator=g, checks=False)
    checks, _ = run_checks(digits_cnn, x, y, ev, which=["active-test"], suite=weak_suite(0.1),
                           generator=torch.Generator().manual_seed(0))
    (active,) = checks
    assert active.name == "active-test" and active.status == "fail"
    ev.checks = checks
    assert not ev.reliable
    # not asked for: absent
    checks, _ = run_checks(digits_cnn, x, y, ev, which=None, generator=torch.Generator().manual_seed(0))
    assert "active-test" not in [c.name for c in checks]
