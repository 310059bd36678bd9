"""Score- and decision-based black-box attacks (square, nes, spsa, simba, hsja) and gradient estimation: exact
per-example query counts under every budget, the threat model, success on the digits CNN, reproducibility
whatever the batch size, and NES/SPSA estimates against the true gradient."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import (
    EstimatedGradients,
    RobustnessWarning,
    attack_spec,
    cw,
    get_attack,
    hsja,
    list_attacks,
    pgd,
    progress,
    simba,
    square,
)
from advlab.attacks._blackbox import counter_normal, counter_signs, counter_uniform
from advlab.attacks._simba import dct_matrix
from advlab.attacks._square import p_schedule
from advlab.oracle import Oracle
from advlab.threat import lp_norm

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

BLACKBOX = [n for n in list_attacks() if "max_queries" in attack_spec(n).defaults()]
EPS = {"linf": 0.25, "l2": 1.5}
# Cheap settings per attack for the tests that only check accounting.
SMALL: dict[str, dict[str, Any]] = {
    "nes": {"samples": 3, "steps": 20},
    "spsa": {"samples": 3, "steps": 20},
    "hsja": {"init_samples": 6, "steps": 6, "init_tries": 20},
}


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = advlab.load_dataset("digits", "test")
    return x[:40], y[:40]


def run(name: str, model: Any, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> advlab.AttackResult:
    spec = attack_spec(name)
    kwargs.setdefault("eps", EPS[spec.default_norm])
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return get_attack(name)(model, x, y, **kwargs)


def test_every_black_box_attack_is_here() -> None:
    assert set(BLACKBOX) >= {"square", "nes", "spsa", "simba", "hsja"}


@pytest.mark.parametrize("name", BLACKBOX)
@pytest.mark.parametrize("budget", [1, 2, 7, 150])
def test_queries_are_exact_and_within_every_budget(name: str, budget: int, digits_cnn: nn.Module,
                                                   digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The result's per-example counts are the oracle's own (total and per example), never above the budget,
    and the oracle never refuses a query (no QueryBudgetError escapes, whatever the budget)."""
    x, y = (t[:12] for t in digits)
    spec = attack_spec(name)
    oracle = Oracle(digits_cnn, output="labels" if name == "hsja" else "scores")
    r = run(name, oracle, x, y, max_queries=budget, eps=[EPS[spec.default_norm], 2 * EPS[spec.default_norm]],
            **SMALL.get(name, {}))
    assert r.queries is not None and r.queries.shape == (2, 12) and r.queries.dtype == torch.int64
    assert int(r.queries.max()) <= budget
    runs = r.queries[:1] if spec.min_norm else r.queries
    assert r.n_queries == int(runs.sum()) == oracle.total_queries
    assert r.n_forward == r.n_queries + 12 * 3 == r.n_queries + oracle.verification_queries
    assert r.n_backward == 0
    for i, e in enumerate(r.eps):  # the threat model, after projection and clipping
        assert bool((lp_norm(r.x_adv[i] - x, r.norm) <= e * (1 + 1e-5) + 1e-6).all())
        assert float(r.x_adv[i].min()) >= 0.0 and float(r.x_adv[i].max()) <= 1.0
        with torch.no_grad():
            assert torch.equal(r.success[i], digits_cnn(r.x_adv[i]).argmax(1) != y)


@pytest.mark.parametrize("name", BLACKBOX)
def test_each_example_is_charged_the_queries_it_made(name: str, digits_cnn: nn.Module,
                                                     digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Per-example accounting is exact: run one example per chunk and the oracle's own total grows, chunk by
    chunk, by what the result charges each example; and the batched run (the same random numbers per example)
    charges the same. In float64, so that no decision at the boundary hangs on the round-off of a batch of
    another size."""
    model = copy.deepcopy(digits_cnn).double()
    x, y = digits[0][:6].double(), digits[1][:6]
    kw = {"max_queries": 120, **SMALL.get(name, {})}
    oracle = Oracle(model, output="labels" if name == "hsja" else "scores")
    totals: list[int] = []
    with progress(lambda done, total: totals.append(oracle.total_queries)):
        alone = run(name, oracle, x, y, batch_size=1, **kw)
    assert alone.queries is not None
    assert torch.diff(torch.tensor([0, *totals])).tolist() == alone.queries[0].tolist()
    whole = run(name, model, x, y, **kw)
    assert whole.queries is not None and torch.equal(whole.queries, alone.queries)
    torch.testing.assert_close(whole.x_adv, alone.x_adv, rtol=1e-9, atol=1e-12)


def test_the_oracles_smaller_budget_and_its_total_budget_apply(digits_cnn: nn.Module,
                                                               digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    oracle = Oracle(digits_cnn, max_queries=5)
    r = square(oracle, x, y, eps=0.05, max_queries=1000)
    assert r.queries is not None and int(r.queries.max()) <= 5
    total = Oracle(digits_cnn, max_total_queries=100)
    r = square(total, x, y, eps=0.05, max_queries=1000)  # 40 examples share 100 queries: no error, stops
    assert total.total_queries == r.n_queries <= 100


def test_an_example_already_adversarial_stops_querying(digits_cnn: nn.Module,
                                                       digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Labels the model does not predict: the first query already meets the goal, and that is all it costs."""
    x, _ = digits
    with torch.no_grad():
        wrong = (digits_cnn(x).argmax(1) + 1) % 10
    for name in ("square", "simba", "hsja"):
        r = run(name, digits_cnn, x, wrong, eps=0.01 if name == "square" else 0.1, max_queries=500)
        assert r.queries is not None and bool((r.queries == 1).all()), name
        assert bool(r.success.all())


def test_square_breaks_the_digits_cnn_with_few_queries(digits_cnn: nn.Module) -> None:
    x, y = advlab.load_dataset("digits", "test")
    x, y = x[:100], y[:100]
    r = square(digits_cnn, x, y, eps=[0.3], max_queries=1000, generator=torch.Generator().manual_seed(0))
    assert float(r.clean_correct.float().mean()) >= 0.9
    assert float(r.success[0].float().mean()) >= 0.95
    assert r.queries is not None and float(r.queries.double().mean()) <= 100
    l2 = square(digits_cnn, x, y, eps=1.5, norm="l2", max_queries=1000, generator=torch.Generator().manual_seed(0))
    assert float(l2.success[0].float().mean()) >= 0.9


@pytest.mark.parametrize(("name", "eps", "floor", "kwargs"), [
    ("nes", 0.3, 0.9, {"max_queries": 2000}),
    ("spsa", 0.3, 0.9, {"max_queries": 2000, "samples": 16}),
    ("simba", 1.5, 0.8, {"max_queries": 1000}),
    ("simba", 1.5, 0.8, {"max_queries": 1000, "basis": "dct"}),
])
def test_score_attacks_break_the_digits_cnn(name: str, eps: float, floor: float, kwargs: dict[str, Any],
                                            digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    r = run(name, digits_cnn, x, y, eps=eps, **kwargs)
    assert float((r.success[0] | ~r.clean_correct).float().mean()) >= floor


def test_hsja_comes_close_to_white_box_distances_from_labels_alone(
    digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Label queries only: HSJA's median L2 distance shrinks with the budget and comes within 25 % of C&W's."""
    x, y = digits
    oracle = Oracle(digits_cnn, output="labels")
    few = hsja(oracle, x, y, eps=10.0, max_queries=200, generator=torch.Generator().manual_seed(0))
    many = hsja(oracle, x, y, eps=10.0, max_queries=2000, generator=torch.Generator().manual_seed(0))
    white = cw(digits_cnn, x, y, eps=10.0)
    assert bool(many.success.all()) and bool(few.success.all())
    assert many.queries is not None and torch.equal(many.queries[0], many.queries[-1])
    median = float(many.distances[0].median())
    assert median < 0.9 * float(few.distances[0].median())
    assert median <= 1.25 * float(white.distances[0][white.success[0]].median())


@pytest.mark.parametrize("name", BLACKBOX)
def test_the_same_seed_gives_the_same_result_whatever_the_batch_size(
    name: str, digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = (t[:20] for t in digits)
    kw = {"max_queries": 200, **SMALL.get(name, {})}
    whole = run(name, digits_cnn, x, y, **kw)
    chunked = run(name, digits_cnn, x, y, batch_size=7, **kw)
    torch.testing.assert_close(chunked.x_adv, whole.x_adv, rtol=1e-5, atol=1e-6)
    assert whole.queries is not None and torch.equal(chunked.queries, whole.queries)
    assert torch.equal(chunked.success, whole.success)
    other = run(name, digits_cnn, x, y, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(other.x_adv, whole.x_adv)  # the seed matters


def test_targeted_square_hits_its_targets(digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    targets = (y + 3) % 10
    r = square(digits_cnn, x, targets, eps=0.3, targeted=True, true_labels=y, max_queries=1000,
               generator=torch.Generator().manual_seed(0))
    assert float(r.success_rate[0]) >= 0.8
    with torch.no_grad():
        assert torch.equal(digits_cnn(r.x_adv[0]).argmax(1) == targets, r.success[0])


# ---------------------------------------------------------------- gradient estimation


def linear_model() -> nn.Module:
    """A float64 softmax regression on the digits (fixed random weights): its log-scores' Jacobian is known."""
    model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10,
                                generator=torch.Generator().manual_seed(0)).double()
    return model.eval()


@pytest.mark.parametrize(("method", "sigma"), [("nes", 1e-3), ("spsa", 1e-2)])
def test_estimates_correlate_with_the_true_gradient(method: str, sigma: float,
                                                    digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``E[u u^T] = I``: with 2,000 antithetic pairs in 64 dimensions the estimate of the gradient of the
    cross-entropy of the log-scores has cosine > 0.9 with the true gradient (about sqrt(S / (S + d)) = 0.98)."""
    model = linear_model()
    x, y = digits[0][:8].double(), digits[1][:8]
    x = x.clamp(0.05, 0.95)  # away from the bounds, so no sample is clipped
    est = EstimatedGradients(Oracle(model), method=method, samples=2000, sigma=sigma,
                             generator=torch.Generator().manual_seed(0))

    def grad(m: nn.Module) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(torch.log_softmax(m(xg), 1), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
        return g.flatten(1)

    cosine = torch.nn.functional.cosine_similarity(grad(est), grad(model), dim=1)
    assert bool((cosine > 0.9).all()), cosine
    assert est.oracle.total_queries == 8 + 8 * 2 * 2000


def test_pgd_on_estimated_gradients_is_a_black_box_attack_with_exact_counts(
    digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits
    oracle = Oracle(digits_cnn)
    model = EstimatedGradients(oracle, samples=20, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        r = pgd(model, x, y, eps=0.3, steps=10, step_size=0.1, early_stop=True,
                generator=torch.Generator().manual_seed(0))
    assert float((r.success[0] | ~r.clean_correct).float().mean()) >= 0.9
    # every forward pass is one query per example, every gradient 2 * samples more
    assert oracle.total_queries == r.n_forward + 2 * 20 * r.n_backward
    with torch.no_grad():
        assert torch.equal(digits_cnn(r.x_adv[0]).argmax(1) != y, r.success[0])


def test_estimated_gradients_refuse_a_label_oracle() -> None:
    with pytest.raises(ValueError, match="needs class scores"):
        EstimatedGradients(Oracle(linear_model(), output="labels"))


# ---------------------------------------------------------------- pieces with closed forms


def test_the_square_size_schedule_halves_at_the_papers_points() -> None:
    steps = torch.tensor([0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000, 6001,
                          8000, 8001, 10_000])
    expected = [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    torch.testing.assert_close(p_schedule(0.8, steps, 10_000), 0.8 / torch.tensor(expected, dtype=torch.float64))
    # rescaled to the budget: at 1,000 queries the first halving comes after query 1
    assert float(p_schedule(0.8, torch.tensor([2]), 1000)[0]) == 0.4


def test_the_dct_basis_is_orthonormal() -> None:
    for n in (1, 6, 8, 28):
        m = dct_matrix(n)
        torch.testing.assert_close(m @ m.T, torch.eye(n, dtype=torch.float64))


def test_counter_based_numbers_depend_on_the_key_alone() -> None:
    seeds = torch.tensor([1, 2, 3, 4], dtype=torch.int64)
    u = counter_uniform(seeds, 5, 0, (1000,))
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02
    torch.testing.assert_close(counter_uniform(seeds[2:], 5, 0, (1000,)), u[2:])  # whatever else is drawn
    assert not torch.equal(counter_uniform(seeds, 6, 0, (1000,)), u)  # another step
    assert not torch.equal(counter_uniform(seeds, 5, 1, (1000,)), u)  # another stream
    z = counter_normal(seeds, 0, 0, (20_000,), torch.float64)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    s = counter_signs(seeds, torch.tensor([0, 1, 2, 3]), 0, (1000,))
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.mean())) < 0.1


def test_simba_stays_in_the_ball_and_pays_at_most_two_queries_per_direction(
    digits_cnn: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits
    r = simba(digits_cnn, x, y, eps=0.6, step_size=0.2, max_queries=10_000)
    assert bool((r.distances[0] <= 0.6 + 1e-6).all())
    assert r.queries is not None and int(r.queries.max()) <= 1 + 2 * 64 * 2  # at most two passes of 64 pixels


def test_evaluate_attack_reports_queries_per_example(digits_cnn: nn.Module,
                                                     digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    from advlab.evaluate import evaluate_attack

    x, y = digits
    record = evaluate_attack(digits_cnn, x, y, "square", eps=[0.1, 0.3], max_queries=100)
    assert record.result.queries is not None
    for i, row in enumerate(record.results):
        q = record.result.queries[i].double()
        assert row["mean_queries"] == pytest.approx(float(q.mean()))
        assert row["median_queries"] == pytest.approx(float(q.median()))
    assert record.n_queries == int(record.result.queries.sum())
