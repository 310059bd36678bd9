"""Self-checks of a robustness evaluation (advlab.evaluate._checks): a healthy trained digits model passes
every check; models that mask gradients (a non-differentiable quantiser, a saturated softmax, rounding inside
the model), return probabilities, are randomised or ignore their input fire the check made for them, with the
adaptive option that fixes it; evaluations that are weak or inconsistent fire theirs."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.attacks import RobustnessWarning, apgd, square
from advlab.defenses.wrappers import Defended, Quantize
from advlab.evaluate._checks import (
    CHECKS,
    GRAD_SHARE,
    UNBOUNDED_MAX_ACCURACY,
    run_checks,
)
from advlab.evaluate._evaluation import Evaluation, StageCost
from advlab.threat import lp_norm

EPS = [0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def digits_test() -> tuple[Tensor, Tensor]:
    x, y = advlab.load_dataset("digits", "test")
    return x[:80], y[:80]


def cascade(model: nn.Module, x: Tensor, y: Tensor, eps: list[float], *, square_queries: int = 0,
            apgd_steps: int = 20, seed: int = 0) -> Evaluation:
    """A small worst-case cascade built from real attacks (APGD-CE, then Square on the survivors), with the
    carry-over of broken points to larger budgets, as an :class:`Evaluation`."""
    n = x.shape[0]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    names = ["apgd-ce"] + (["square"] if square_queries else [])
    robust = torch.zeros(len(eps), n, dtype=torch.bool)
    broken_by = torch.full((len(eps), n), -1, dtype=torch.int64)
    distances = torch.full((len(eps), n), math.nan)
    x_adv = x[None].repeat(len(eps), *([1] * x.ndim))
    stages = []
    alive = clean.clone()
    for e_i, e in enumerate(eps):
        if e_i:  # carry over what a smaller budget broke
            broken_by[e_i], distances[e_i], x_adv[e_i] = broken_by[e_i - 1], distances[e_i - 1], x_adv[e_i - 1]
        for a_i, name in enumerate(names):
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                stages.append(StageCost(e, name, 0, 0, 0.0, 0, 0, 0, 0.0, 0))
                continue
            g = torch.Generator().manual_seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RobustnessWarning)  # masked models: what the checks report
                if name == "apgd-ce":
                    r = apgd(model, x[idx], y[idx], eps=e, steps=apgd_steps, generator=g)
                else:
                    r = square(model, x[idx], y[idx], eps=e, max_queries=square_queries, generator=g)
            hit = r.success[0]
            rows = idx[hit]
            alive[rows] = False
            broken_by[e_i, rows], distances[e_i, rows], x_adv[e_i, rows] = a_i, r.distances[0, hit], r.x_adv[0, hit]
            stages.append(StageCost(e, name, int(idx.numel()), int(hit.sum()), float(alive.double().mean()),
                                    r.n_forward, r.n_backward, r.n_queries, r.seconds, 0))
        robust[e_i] = alive
    return Evaluation("mini", "linf", list(eps), n, clean, robust, broken_by, distances, x_adv, names, stages,
                      {}, 0.0, x, y)


def by_name(checks: list) -> dict:
    return {c.name: c for c in checks}


def fake_evaluation(x: Tensor, y: Tensor, robust: Tensor, eps: list[float], clean: Tensor | None = None) -> Evaluation:
    n = x.shape[0]
    e = len(eps)
    clean = torch.ones(n, dtype=torch.bool) if clean is None else clean
    return Evaluation("fake", "linf", list(eps), n, clean, robust, torch.full((e, n), -1), torch.full((e, n), math.nan),
                      x[None].repeat(e, *([1] * x.ndim)), [], [], {}, 0.0, x, y)


class Scaled(nn.Module):
    """The model's logits times ``factor`` (1000: a softmax saturated in float32)."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor, self.bounds = model, factor, (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


class Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.bounds = model, (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(dim=1)


class Noisy(nn.Module):
    """Gaussian noise on the input at every call, in eval mode too."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma, self.bounds = model, sigma, (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class Rounded(nn.Module):
    """Rounds the input to 1/4 steps inside forward (not a Defended model)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.bounds = model, (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 4) / 4)


class Constant(nn.Module):
    """Logits that ignore the input: a constant plus a layer of the input whose weight is zero."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(1.0, 0.0, k))
        self.layer = nn.Linear(64, k)
        nn.init.zeros_(self.layer.weight)
        self.bounds = (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits + self.layer(x.reshape(x.shape[0], -1))


def test_checks_names_and_which(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None) -> None:
    x, y = digits_test
    ev = fake_evaluation(x, y, torch.zeros(1, x.shape[0], dtype=torch.bool), [0.1])
    checks, found = run_checks(digits_cnn, x, y, ev, which=["gradients", "randomised"])
    assert [c.name for c in checks] == ["randomised", "gradients"]  # CHECKS order
    assert found == []
    assert CHECKS[-1] == "active-test" and len(CHECKS) == 8
    with pytest.raises(ValueError, match="unknown check"):
        run_checks(digits_cnn, x, y, ev, which=["gradient"])
    with pytest.raises(ValueError, match="evaluation's 80 points"):
        run_checks(digits_cnn, x[:10], y[:10], ev)


def test_healthy_model_passes_every_check(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                          one_thread: None) -> None:
    x, y = digits_test
    t0 = time.perf_counter()
    ev = cascade(digits_cnn, x, y, EPS, square_queries=300)
    checks, found = run_checks(digits_cnn, x, y, ev, generator=torch.Generator().manual_seed(0))
    assert [c.name for c in checks] == list(CHECKS[:-1])  # no active test unless asked
    for c in checks:
        assert c.status == "pass", (c.name, c.message)
        assert c.message and c.meaning and c.adaptive is None
    assert found == []
    got = by_name(checks)
    assert got["gradients"].details["vanishing"] == 0
    assert got["unbounded"].details["accuracy"] <= UNBOUNDED_MAX_ACCURACY
    assert got["black-box"].details["black_box_stages"] == ["square"]
    assert time.perf_counter() - t0 < 60


def test_quantised_defended_model_fires_gradients_and_black_box(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    x, y = digits_test
    model = Defended(Quantize(4), digits_cnn)
    ev = cascade(model, x, y, [0.1, 0.2], square_queries=300)
    checks, _ = run_checks(model, x, y, ev)
    got = by_name(checks)
    grad = got["gradients"]
    assert grad.status == "warn" and grad.adaptive == "bpda" and "adaptive='bpda'" in grad.advice
    assert grad.details["exactly_zero"] == grad.details["points"] > 0
    bb = got["black-box"]
    assert bb.status == "warn" and bb.adaptive == "bpda", bb.message
    # the gradient stage broke nothing; Square broke points: the figures say so
    assert all(s.n_broken == 0 for s in ev.stages if s.attack == "apgd-ce")
    assert sum(p["black_box_broken"] for p in bb.details["per_eps"]) >= 2
    assert got["unbounded"].status == "warn"  # the attack cannot move the model at all
    assert got["randomised"].status == "pass" and got["probabilities"].status == "pass"


def test_robustness_reports_the_checks_of_a_quantised_model(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    """Through the real cascade: the checks run after it and their warnings name BPDA."""
    from advlab.evaluate._robustness import robustness
    from advlab.evaluate._suites import Suite, SuiteAttack

    x, y = digits_test
    x, y = x[:40], y[:40]
    suite = Suite("small", (SuiteAttack("apgd", {"steps": 10}, name="apgd-ce"),
                            SuiteAttack("square", {"max_queries": 200})))
    model = Defended(Quantize(4), digits_cnn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        ev = robustness(model, x, y, eps=[0.1, 0.2], suite=suite, generator=torch.Generator().manual_seed(0))
    got = by_name(ev.checks)
    assert got["gradients"].status == "warn" and got["gradients"].adaptive == "bpda"
    assert got["black-box"].status == "warn" and got["black-box"].details["black_box_stages"] == ["square"]
    assert {c.name for c in ev.warnings} >= {"gradients", "black-box", "unbounded"}
    assert ev.reliable  # warnings, no failed active test
    assert ev.to_dict()["checks"][0]["name"] == "single-step"


def test_checks_follow_the_adaptive_options_the_evaluation_used(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    """With adaptive='bpda' the gradient checks see the BPDA view the suite attacked: no masking left."""
    from advlab.evaluate._robustness import robustness
    from advlab.evaluate._suites import Suite, SuiteAttack

    x, y = digits_test
    x, y = x[:40], y[:40]
    suite = Suite("small", (SuiteAttack("apgd", {"steps": 10}, name="apgd-ce"),
                            SuiteAttack("square", {"max_queries": 200})))
    model = Defended(Quantize(4), digits_cnn)
    ev = robustness(model, x, y, eps=[0.1, 0.2], suite=suite, adaptive="bpda",
                    generator=torch.Generator().manual_seed(0))
    got = by_name(ev.checks)
    for name in ("gradients", "unbounded"):
        assert got[name].status == "pass", got[name].message
    assert got["gradients"].details["exactly_zero"] == 0
    # a saturated softmax evaluated with adaptive='dlr': the vanishing CE gradient is no longer a warning
    scaled = Scaled(digits_cnn, 1000.0)
    ev = fake_evaluation(x, y, torch.zeros(1, x.shape[0], dtype=torch.bool), [0.1])
    ev.config["adaptive"] = ["dlr"]
    (grad,), _ = run_checks(scaled, x, y, ev, which=["gradients"])
    assert grad.status == "pass" and "adaptive='dlr'" in grad.message


def test_rounding_inside_the_model_fires_gradients_without_bpda(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    x, y = digits_test
    model = Rounded(digits_cnn)
    ev = fake_evaluation(x, y, torch.zeros(1, x.shape[0], dtype=torch.bool), [0.1])
    (grad,), _ = run_checks(model, x, y, ev, which=["gradients"])
    assert grad.status == "warn" and grad.details["share"] > GRAD_SHARE
    assert grad.adaptive is None and "BPDA" in grad.advice  # not a Defended model: wrap the operation


def test_saturated_softmax_fires_gradients_with_dlr(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                                    one_thread: None) -> None:
    x, y = digits_test
    model = Scaled(digits_cnn, 1000.0)
    ev = fake_evaluation(x, y, torch.zeros(1, x.shape[0], dtype=torch.bool), [0.1])
    (grad,), _ = run_checks(model, x, y, ev, which=["gradients"])
    assert grad.status == "warn" and grad.adaptive == "dlr", grad.message
    assert grad.details["saturated"] * 2 >= grad.details["vanishing"] > GRAD_SHARE * grad.details["points"]


def test_probability_outputs_fire_and_attack_checks_skip(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                                          one_thread: None) -> None:
    x, y = digits_test
    model = Probabilities(digits_cnn)
    ev = fake_evaluation(x, y, torch.ones(2, x.shape[0], dtype=torch.bool), [0.05, 0.1])
    checks, found = run_checks(model, x, y, ev)
    got = by_name(checks)
    assert got["probabilities"].status == "warn" and "softmax" in got["probabilities"].advice
    for name in ("single-step", "unbounded", "gradients"):
        assert got[name].status == "skip" and "probabilities" in got[name].message
    assert found == []


def test_random_noise_fires_randomised_with_eot(digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor],
                                                one_thread: None) -> None:
    x, y = digits_test
    torch.manual_seed(0)  # the test model's noise (the library itself draws no global randomness)
    model = Noisy(digits_cnn, 0.1)
    ev = fake_evaluation(x, y, torch.zeros(1, x.shape[0], dtype=torch.bool), [0.1])
    (rand,), _ = run_checks(model, x, y, ev, which=["randomised"])
    assert rand.status == "warn" and rand.adaptive == "eot" and rand.details["max_difference"] > 0


def test_robust_accuracy_rising_with_eps_fires_eps_monotone(digits_cnn: nn.Module,
                                                             digits_test: tuple[Tensor, Tensor],
                                                             one_thread: None) -> None:
    x, y = digits_test
    n = x.shape[0]
    robust = torch.zeros(3, n, dtype=torch.bool)
    robust[0, :20], robust[1, :10], robust[2, :30] = True, True, True  # 25 %, 12.5 %, 37.5 %
    ev = fake_evaluation(x, y, robust, [0.05, 0.1, 0.2])
    (mono,), _ = run_checks(digits_cnn, x, y, ev, which=["eps-monotone"])
    assert mono.status == "warn" and "rises" in mono.message
    assert mono.details["points_robust_only_at_larger_eps"] == [0, 20]
    # the same model with a consistent evaluation passes
    robust[2] = robust[1]
    (mono,), _ = run_checks(digits_cnn, x, y, fake_evaluation(x, y, robust, [0.05, 0.1, 0.2]), which=["eps-monotone"])
    assert mono.status == "pass", mono.message


def test_weak_evaluation_fires_single_step_and_found_points_are_adversarial(
    digits_cnn: nn.Module, digits_test: tuple[Tensor, Tensor], one_thread: None
) -> None:
    x, y = digits_test
    with torch.no_grad():
        clean = digits_cnn(x).argmax(1) == y
    eps = [0.1, 0.3]
    robust = clean[None].repeat(2, 1)  # an "evaluation" that broke nothing
    ev = fake_evaluation(x, y, robust, eps, clean=clean)
    (step,), found = run_checks(digits_cnn, x, y, ev, which=["single-step"])
    assert step.status == "warn" and step.adaptive is None and "steps" in step.advice
    assert found and {f.name for f in found} == {"fgsm (self-check)"}
    assert [f.eps_index for f in found] == [0, 1]
    assert step.details["broken_by_single_step"] == [f.index.numel() for f in found]
    for f in found:
        e = eps[f.eps_index]
        assert bool(robust[f.eps_index, f.index].all())  # only points the evaluation left robust
        assert f.x_adv.shape == (f.index.numel(), *x.shape[1:])
        dist = lp_norm(f.x_adv - x[f.index], "linf")
        assert bool((dist <= e + 1e-6).all()) and torch.allclose(dist, f.distances, atol=1e-6)
        assert float(f.x_adv.min()) >= 0.0 and float(f.x_adv.max()) <= 1.0
        with torch.no_grad():
            assert bool((digits_cnn(f.x_adv).argmax(1) != y[f.index]).all())
    assert found[1].index.numel() > found[0].index.numel()  # one step of 0.3 breaks more than one of 0.1


def test_unbounded_fires_on_models_constant_near_their_inputs(digits_cnn: nn.Module,
                                                              digits_test: tuple[Tensor, Tensor],
                                                              one_thread: None) -> None:
    x, y = digits_test
    for model in (Constant(), Defended(Quantize(2), digits_cnn)):
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        assert bool(clean.any())
        ev = fake_evaluation(x, y, clean[None].clone(), [0.1], clean=clean)
        (unb,), _ = run_checks(model, x, y, ev, which=["unbounded"])
        assert unb.status == "warn", unb.message
        assert unb.details["accuracy"] > UNBOUNDED_MAX_ACCURACY
    assert unb.adaptive == "bpda"  # the binarising Defended model: BPDA is the fix


def test_non_differentiable_sklearn_model_skips_gradient_checks(digits_test: tuple[Tensor, Tensor]) -> None:
    from sklearn.tree import DecisionTreeClassifier

    from advlab.models import from_sklearn

    xt, yt = advlab.load_dataset("digits", "train")
    est = DecisionTreeClassifier(max_depth=6, random_state=0).fit(xt.reshape(len(xt), -1).numpy(), yt.numpy())
    model = from_sklearn(est, in_shape=(1, 8, 8))
    x, y = digits_test
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    ev = fake_evaluation(x, y, clean[None].clone(), [0.1], clean=clean)
    checks, found = run_checks(model, x, y, ev, active_test=True)
    got = by_name(checks)
    for name in ("single-step", "unbounded", "gradients", "active-test"):
        assert got[name].status == "skip" and "tree" in got[name].message
    assert got["black-box"].status == "skip"
    assert got["randomised"].status == "pass" and found == []
