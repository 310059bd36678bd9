"""Threat models: L_p balls (projection, random starts, steepest steps) and attack criteria."""

from __future__ import annotations

import math
from collections.abc import Callable

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.threat import (
    LP_NORMS,
    LpBall,
    check_norm,
    choose_targets,
    clip_to_bounds,
    is_adversarial,
    lp_norm,
    project_l1,
    random_targets,
)

deltas = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 4), st.integers(1, 7)),
    elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False),
)
radii = st.floats(0.0, 5.0, allow_nan=False)


def _l1_bisection(v: torch.Tensor, r: float) -> torch.Tensor:
    """Independent reference: soft-thresholding with the threshold found by bisection."""
    if v.abs().sum() <= r:
        return v.clone()
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((v.abs() - mid).clamp(min=0).sum()) > r:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - hi).clamp(min=0)


# ---------------------------------------------------------------- projection


@settings(max_examples=60, deadline=None)
@given(deltas, radii, st.sampled_from(LP_NORMS))
def test_projection_is_inside_and_idempotent(delta_np: np.ndarray, eps: float, norm: str) -> None:
    delta = torch.from_numpy(delta_np)
    ball = LpBall(norm, eps)
    p = ball.project(delta)
    assert bool(ball.contains(p, tol=1e-9).all())
    torch.testing.assert_close(ball.project(p), p, rtol=1e-9, atol=1e-9)
    inside = lp_norm(delta, norm) <= eps
    torch.testing.assert_close(p[inside], delta[inside])  # points inside the ball do not move


@settings(max_examples=60, deadline=None)
@given(deltas, st.floats(0.1, 5.0), st.sampled_from(LP_NORMS), st.integers(0, 2**31 - 1))
def test_projection_is_the_nearest_point(delta_np: np.ndarray, eps: float, norm: str, seed: int) -> None:
    delta = torch.from_numpy(delta_np)
    ball = LpBall(norm, eps)
    p = ball.project(delta)
    gen = torch.Generator().manual_seed(seed)
    rows = delta.repeat(64, 1)  # 64 competitors per row: uniform inside the ball, and on its surface
    inside = ball.random_init(rows, gen)
    surface = ball.project(10 * eps * torch.randn(rows.shape, generator=gen, dtype=rows.dtype))
    for z in (inside, surface):
        assert bool(ball.contains(z, tol=1e-9).all())
        d_other = (rows - z).norm(dim=1).view(64, -1)
        assert bool(((delta - p).norm(dim=1)[None] <= d_other + 1e-9).all())


def test_linf_and_l2_projection_closed_forms() -> None:
    delta = torch.tensor([[3.0, -0.5, -4.0], [0.1, 0.2, -0.1]])
    assert torch.equal(LpBall("linf", 1.0).project(delta), torch.tensor([[1.0, -0.5, -1.0], [0.1, 0.2, -0.1]]))
    p = LpBall("l2", 2.0).project(delta)
    torch.testing.assert_close(p[0], delta[0] * 2.0 / delta[0].norm())
    torch.testing.assert_close(p[1], delta[1])


def test_l1_projection_known_examples() -> None:
    torch.testing.assert_close(project_l1(torch.tensor([[3.0, 1.0]]), 2.0), torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(project_l1(torch.tensor([[1.0, -1.0, 1.0]]), 1.5), torch.tensor([[0.5, -0.5, 0.5]]))
    torch.testing.assert_close(project_l1(torch.tensor([[0.3, -0.2]]), 1.0), torch.tensor([[0.3, -0.2]]))
    assert torch.equal(project_l1(torch.tensor([[0.3, -0.2]]), 0.0), torch.zeros(1, 2))


@settings(max_examples=60, deadline=None)
@given(deltas, radii)
def test_l1_projection_matches_bisection(delta_np: np.ndarray, eps: float) -> None:
    delta = torch.from_numpy(delta_np)
    expected = torch.stack([_l1_bisection(row, eps) for row in delta])
    torch.testing.assert_close(project_l1(delta, eps), expected, rtol=1e-7, atol=1e-7)


def test_per_example_eps_projection_and_image_shapes() -> None:
    delta = torch.ones(3, 1, 2, 2)
    eps = torch.tensor([0.5, 1.0, 8.0])
    for norm in LP_NORMS:
        p = LpBall(norm, eps).project(delta)
        assert p.shape == delta.shape
        torch.testing.assert_close(lp_norm(p, norm), torch.minimum(lp_norm(delta, norm), eps))


# ---------------------------------------------------------------- random starts


@pytest.mark.parametrize("norm", LP_NORMS)
def test_random_init_is_inside_and_spread(norm: str) -> None:
    eps, n, d = 0.7, 4000, 12
    like = torch.zeros(n, 1, 3, 4, dtype=torch.float64)
    delta = LpBall(norm, eps).random_init(like, torch.Generator().manual_seed(0))
    assert delta.shape == like.shape and delta.dtype == like.dtype
    norms = lp_norm(delta, norm)
    assert bool((norms <= eps + 1e-12).all())
    flat = delta.reshape(n, -1)
    assert float(flat.mean(dim=0).abs().max()) < 0.05 * eps  # centred, no preferred direction
    assert float((flat > 0).double().mean()) == pytest.approx(0.5, abs=0.03)  # every sign
    if norm == "linf":  # uniform per coordinate: mean |delta_i| = eps / 2, values reach both faces
        assert float(flat.abs().mean()) == pytest.approx(eps / 2, rel=0.02)
        assert float(flat.max()) > 0.99 * eps and float(flat.min()) < -0.99 * eps
    else:  # uniform in the ball: the radius is eps * U^(1/d), whose mean is eps * d / (d + 1)
        assert float(norms.mean()) == pytest.approx(eps * d / (d + 1), rel=0.01)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_radial_random_init_has_a_uniform_radius(norm: str) -> None:
    eps, n = 0.7, 4000
    like = torch.zeros(n, 1, 3, 4, dtype=torch.float64)
    delta = LpBall(norm, eps).random_init(like, torch.Generator().manual_seed(0), radial=True)
    radius = lp_norm(delta, norm)
    assert bool((radius <= eps + 1e-12).all())
    # Uniform on [0, eps]: mean eps / 2, and a quarter of the draws below eps / 4.
    assert float(radius.mean()) == pytest.approx(eps / 2, rel=0.03)
    assert float((radius < eps / 4).double().mean()) == pytest.approx(0.25, abs=0.03)
    flat = delta.reshape(n, -1)
    assert float(flat.mean(dim=0).abs().max()) < 0.05 * eps
    assert float((flat > 0).double().mean()) == pytest.approx(0.5, abs=0.03)
    linf = LpBall("linf", eps)
    assert torch.equal(linf.random_init(like, torch.Generator().manual_seed(1), radial=True),
                       linf.random_init(like, torch.Generator().manual_seed(1)))


def test_random_init_reproducible_with_generator() -> None:
    like = torch.zeros(5, 8)
    for norm in LP_NORMS:
        a = LpBall(norm, 0.3).random_init(like, torch.Generator().manual_seed(3))
        b = LpBall(norm, 0.3).random_init(like, torch.Generator().manual_seed(3))
        c = LpBall(norm, 0.3).random_init(like, torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- steepest steps


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 30)),
               elements=st.floats(-5, 5, allow_nan=False).filter(lambda v: abs(v) > 1e-3)),
    st.floats(0.01, 3.0),
)
def test_steepest_step_lengths(grad_np: np.ndarray, alpha: float) -> None:
    grad = torch.from_numpy(grad_np)
    s_inf = LpBall("linf", 1.0).steepest_step(grad, alpha)
    torch.testing.assert_close(s_inf, alpha * grad.sign())
    s_2 = LpBall("l2", 1.0).steepest_step(grad, alpha)
    torch.testing.assert_close(lp_norm(s_2, "l2"), torch.full((grad.shape[0],), alpha, dtype=grad.dtype))
    assert bool(((s_2 * grad).sum(dim=1) > 0).all())  # an ascent direction
    s_1 = LpBall("l1", 1.0).steepest_step(grad, alpha, l1_sparsity=0.5)
    torch.testing.assert_close(lp_norm(s_1, "l1"), torch.full((grad.shape[0],), alpha, dtype=grad.dtype))
    assert bool(((s_1 * grad) >= 0).all())


def test_l1_step_is_sparse_on_the_largest_coordinates() -> None:
    grad = torch.tensor([[0.1, -5.0, 0.2, 3.0, 0.0, -0.3, 0.05, 0.01, 0.02, 0.04]])
    step = LpBall("l1", 1.0).steepest_step(grad, 2.0, l1_sparsity=0.8)  # k = 2 coordinates move
    torch.testing.assert_close(step, torch.tensor([[0.0, -1.0, 0.0, 1.0, 0, 0, 0, 0, 0, 0]]))


def test_l1_step_skips_coordinates_stuck_at_bounds() -> None:
    x = torch.tensor([[1.0, 0.5, 0.0, 0.5]])
    grad = torch.tensor([[9.0, 1.0, -8.0, -2.0]])  # the two largest push out of [0, 1]
    step = LpBall("l1", 1.0).steepest_step(grad, 1.0, x=x, bounds=(0.0, 1.0), l1_sparsity=0.5)
    torch.testing.assert_close(step, torch.tensor([[0.0, 0.5, 0.0, -0.5]]))


def test_per_example_step_size() -> None:
    grad = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    alpha = torch.tensor([0.1, 1.0, 2.0])
    for norm in LP_NORMS:
        step = LpBall(norm, 1.0).steepest_step(grad, alpha)
        torch.testing.assert_close(lp_norm(step, norm), alpha)


def test_bad_l1_sparsity() -> None:
    with pytest.raises(ValueError, match="l1_sparsity"):
        LpBall("l1", 1.0).steepest_step(torch.ones(1, 3), 1.0, l1_sparsity=1.0)


# ---------------------------------------------------------------- norms, distance, bounds


def test_lp_norm_and_distance() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x_adv = torch.tensor([[3.0, -4.0, 0.0, 0.0], [1.0, 1.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    torch.testing.assert_close(LpBall("linf", 1.0).distance(x, x_adv), torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(LpBall("l2", 1.0).distance(x, x_adv), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(LpBall("l1", 1.0).distance(x, x_adv), torch.tensor([7.0, 4.0]))
    assert torch.equal(LpBall("l2", 5.0).contains(x_adv - x), torch.tensor([True, True]))
    assert torch.equal(LpBall("l1", 5.0).contains(x_adv - x), torch.tensor([False, True]))


def test_clip_to_bounds() -> None:
    assert torch.equal(clip_to_bounds(torch.tensor([-1.0, 0.5, 2.0]), (0.0, 1.0)), torch.tensor([0.0, 0.5, 1.0]))


def test_bad_norm_and_eps() -> None:
    with pytest.raises(ValueError, match=r"unknown norm 'l3'.*linf"):
        LpBall("l3", 1.0)
    with pytest.raises(ValueError, match="unknown norm"):
        check_norm("L2")
    with pytest.raises(ValueError, match="unknown norm"):
        lp_norm(torch.ones(1, 2), "l3")
    with pytest.raises(ValueError, match="non-negative"):
        LpBall("linf", -0.1)
    with pytest.raises(ValueError, match="finite"):
        LpBall("l2", math.nan)
    with pytest.raises(ValueError, match="non-negative"):
        LpBall("l1", torch.tensor([0.1, -1.0]))
    assert check_norm("l1") == "l1"


# ---------------------------------------------------------------- criteria


def test_is_adversarial() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    assert torch.equal(is_adversarial(logits, labels, targeted=False), torch.tensor([False, True]))
    assert torch.equal(is_adversarial(logits, labels, targeted=True), torch.tensor([True, False]))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_random_targets_never_equal_labels(num_classes: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    targets = random_targets(labels, num_classes, gen)
    assert targets.dtype == labels.dtype and targets.shape == labels.shape
    assert bool((targets != labels).all())
    assert bool(((targets >= 0) & (targets < num_classes)).all())


def test_random_targets_cover_every_other_class() -> None:
    labels = torch.zeros(3000, dtype=torch.long)
    targets = random_targets(labels, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(targets, minlength=4)
    assert counts[0] == 0 and bool((counts[1:] > 900).all())
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_targets(labels, 1)


def test_choose_least_likely_targets() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(weight)
    x = torch.tensor([[1.0, 2.0], [-3.0, 1.0], [-1.0, -1.0]])
    expected = (x @ weight.T).argmin(dim=1)
    assert torch.equal(expected, torch.tensor([2, 0, 0]))
    logits = model(x).detach()
    # excluding the true class: the least likely of the others
    assert torch.equal(choose_targets("least-likely", torch.tensor([0, 1, 1]), logits=logits), expected)
    excluded = choose_targets("least-likely", expected, logits=logits)  # next-least-likely
    assert torch.equal(excluded, torch.tensor([0, 1, 1]))


def test_choose_targets_modes() -> None:
    labels = torch.tensor([0, 1, 2, 2])
    assert choose_targets(2, labels, num_classes=3).tolist() == [2, 2, 2, 2]
    assert choose_targets("1", labels, num_classes=3).tolist() == [1, 1, 1, 1]
    random = choose_targets("random", labels, num_classes=3, generator=torch.Generator().manual_seed(0))
    assert bool((random != labels).all())
    with pytest.raises(ValueError, match=r"out of range; use 0\.\.2"):
        choose_targets(3, labels, num_classes=3)
    with pytest.raises(ValueError, match="not a target mode"):
        choose_targets("most-likely", labels, num_classes=3)
    with pytest.raises(ValueError, match="need the clean logits"):
        choose_targets("least-likely", labels, num_classes=3)


def test_l0_ball_keeps_the_largest_coordinates() -> None:
    delta = torch.tensor([[0.5, -2.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.0]])
    ball = LpBall("l0", 2)
    p = ball.project(delta)
    expected = torch.tensor([[0.0, -2.0, 0.0, 1.0], [0.1, 0.1, 0.0, 0.0]])  # ties keep the lower index
    assert torch.equal(p, expected)
    assert lp_norm(p, "l0").tolist() == [2.0, 2.0]
    assert bool(ball.contains(p).all()) and not bool(ball.contains(delta).all())
    assert torch.equal(LpBall("l0", 3).project(delta[1:]), delta[1:])  # already inside: unchanged
    assert torch.equal(LpBall("l0", 0).project(delta), torch.zeros_like(delta))
    with pytest.raises(ValueError, match="no random start"):
        ball.random_init(delta)
    with pytest.raises(ValueError, match="no steepest step"):
        ball.steepest_step(delta, 1.0)


@settings(max_examples=40, deadline=None)
@given(deltas, st.integers(0, 8))
def test_l0_projection_is_the_nearest_point(delta_np: np.ndarray, k: int) -> None:
    """No other set of k kept coordinates is closer (in L2) than the k largest."""
    delta = torch.from_numpy(delta_np)
    p = LpBall("l0", k).project(delta)
    assert bool((lp_norm(p, "l0") <= k).all())
    kept = (delta - p).norm(dim=1)
    sorted_sq = delta.pow(2).sort(dim=1).values  # dropping the d - k smallest is optimal
    optimum = sorted_sq[:, : max(delta.shape[1] - k, 0)].sum(dim=1).sqrt()
    torch.testing.assert_close(kept, optimum)


def test_lp_ball_refuses_a_boolean_budget() -> None:
    with pytest.raises(TypeError, match="eps must be a number"):
        LpBall("linf", True)  # type: ignore[arg-type]


# ---------------------------------------------------------------- input the ball would misread


def _methods(ball: LpBall) -> dict[str, Callable[[torch.Tensor], object]]:
    """Each method of the ball, called on one argument shaped like ``t``."""
    return {
        "project": lambda t: ball.project(t),
        "contains": lambda t: ball.contains(t),
        "distance": lambda t: ball.distance(t, t),
        "random_init": lambda t: ball.random_init(t, torch.Generator().manual_seed(0)),
        "steepest_step": lambda t: ball.steepest_step(t, 0.1),
    }


@pytest.mark.parametrize("norm", [*LP_NORMS, "l0"])
@pytest.mark.parametrize("method", ["project", "contains", "distance", "random_init", "steepest_step"])
@pytest.mark.parametrize("shape", [(5,), ()])
def test_an_unbatched_vector_is_refused(norm: str, method: str, shape: tuple[int, ...]) -> None:
    ball = LpBall(norm, 0.5)
    if norm == "l0" and method in ("random_init", "steepest_step"):
        pytest.skip("the l0 ball has neither (refused for any shape)")
    fn = _methods(ball)[method]
    expected = rf"LpBall\.{method}: .* must be a batch of shape \(N, \.\.\.\).*unsqueeze\(0\)"
    with pytest.raises(ValueError, match=expected):
        fn(torch.ones(shape))
    fn(torch.ones(1, *shape) if shape else torch.ones(1, 1))  # the batched form runs


@pytest.mark.parametrize("norm", [*LP_NORMS, "l0"])
@pytest.mark.parametrize("method", ["project", "contains", "distance", "random_init"])
def test_per_example_eps_of_the_wrong_length_is_refused(norm: str, method: str) -> None:
    ball = LpBall(norm, torch.tensor([0.1, 0.2, 0.3]))
    if norm == "l0" and method == "random_init":
        pytest.skip("the l0 ball has no random start")
    fn = _methods(ball)[method]
    with pytest.raises(ValueError, match=r"per-example eps has 3 values but the batch has 4 examples"):
        fn(torch.ones(4, 2))
    fn(torch.ones(3, 2))


def test_per_example_step_size_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match=r"per-example step_size has 2 values but the batch has 3"):
        LpBall("l2", 1.0).steepest_step(torch.ones(3, 4), torch.tensor([0.1, 0.2]))


def test_shapes_that_disagree_are_refused() -> None:
    ball = LpBall("l2", 1.0)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3\) but x_adv has \(3, 2\)"):
        ball.distance(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"x has shape"):
        LpBall("l1", 1.0).steepest_step(torch.ones(2, 3), 0.1, x=torch.ones(2, 4), bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        ball.project([[1.0, 2.0]])  # type: ignore[arg-type]


def test_eps_tensors_of_the_wrong_kind_are_refused() -> None:
    with pytest.raises(TypeError, match="real-valued"):
        LpBall("linf", torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"per-example \(N,\) tensor, got shape \(2, 2\)"):
        LpBall("linf", torch.ones(2, 2))
    with pytest.raises(TypeError, match="eps must be a number"):
        LpBall("linf", np.bool_(True))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eps must be a number"):
        LpBall("linf", "0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("eps", [np.float32(0.25), np.float64(0.25), np.int64(1)])
def test_numpy_scalars_are_budgets(eps: object) -> None:
    ball = LpBall("linf", eps)  # type: ignore[arg-type]
    assert isinstance(ball.eps, float) and ball.eps == float(eps)  # type: ignore[arg-type]
    assert float(ball.project(torch.full((1, 3), 5.0)).max()) == float(eps)  # type: ignore[arg-type]
