"""Query-counting oracles: exact counts per example and in total, budgets refused before the model runs, and
clear errors for answers or inputs of the wrong shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import get_attack, hsja, square
from advlab.oracle import Oracle, QueryBudgetError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)


class Counted(nn.Module):
    """A softmax-regression model that counts the rows it evaluates (to see what an oracle did run)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = advlab.create_model("softmax", in_shape=SHAPE, num_classes=10,
                                         generator=torch.Generator().manual_seed(0))
        self.rows = 0
        self.bounds = (0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        out: torch.Tensor = self.inner(x)
        return out


def batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def test_counts_are_exact_per_example_and_in_total() -> None:
    model = Counted()
    oracle = Oracle(model, output="scores")
    session = oracle.session(5)
    p = session.query(batch(4), torch.tensor([0, 0, 3, 4]))
    assert p.shape == (4, 10) and torch.allclose(p.sum(1), torch.ones(4))
    session.query(batch(2, 1), torch.tensor([3, 3]))
    assert session.queries.tolist() == [2, 0, 0, 3, 1]
    oracle.query(batch(3))  # outside a session: the total only
    assert oracle.total_queries == 9 and model.rows == 9
    assert session.remaining().tolist()[0] > 10**12  # no budget: unlimited
    oracle.verify(batch(2))  # the evaluator's re-check: not a query
    assert oracle.total_queries == 9 and oracle.verification_queries == 2


def test_scores_are_the_softmax_so_log_scores_give_the_logit_margins() -> None:
    model = Counted()
    x = batch(3)
    logp = Oracle(model).query(x).log()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logp - logp[:, :1], logits - logits[:, :1], rtol=1e-5, atol=1e-5)


def test_label_oracles_answer_the_top_class_only() -> None:
    model = Counted()
    x = batch(6)
    labels = Oracle(model, output="labels").query(x)
    with torch.no_grad():
        assert torch.equal(labels, model(x).argmax(1))
    assert labels.shape == (6,) and labels.dtype == torch.int64


def test_a_budget_is_refused_before_the_model_runs() -> None:
    model = Counted()
    oracle = Oracle(model, max_queries=3, max_total_queries=5)
    session = oracle.session(2)
    session.query(batch(3), torch.tensor([0, 0, 1]))
    assert session.remaining().tolist() == [1, 2]
    with pytest.raises(QueryBudgetError, match="example 0 would make 4 queries, over its budget of 3"):
        session.query(batch(2), torch.tensor([0, 0]))
    with pytest.raises(QueryBudgetError, match="total budget of 5"):
        session.query(batch(3), torch.tensor([1, 1, 0]))  # within the per-example budgets, over the total
    assert model.rows == 3 and oracle.total_queries == 3 and session.queries.tolist() == [2, 1]
    tighter = oracle.session(2, max_queries=1)  # the smaller of the session's and the oracle's budgets
    assert tighter.max_queries == 1


@pytest.mark.parametrize("budget", [0, -3])
def test_a_budget_below_one_is_a_clear_error(budget: int) -> None:
    with pytest.raises(ValueError, match="max_queries must be an integer >= 1"):
        Oracle(Counted(), max_queries=budget)
    with pytest.raises(ValueError, match="max_total_queries must be an integer >= 1"):
        Oracle(Counted(), max_total_queries=budget)
    with pytest.raises(ValueError, match="max_queries must be an integer >= 1"):
        get_attack("square")(Counted(), batch(2), torch.tensor([0, 1]), eps=0.1, max_queries=budget)


@pytest.mark.parametrize(
    ("output", "answer", "match"),
    [
        ("scores", lambda x: torch.rand(x.shape[0], 3), r"returned shape \(2, 3\).*must return \(2, 4\) float scores"),
        ("scores", lambda x: torch.rand(x.shape[0] + 1, 4), r"shape \(3, 4\)"),
        ("scores", lambda x: torch.full((x.shape[0], 4), float("nan")), "NaN or inf scores"),
        ("scores", lambda x: -torch.rand(x.shape[0], 4), "negative"),
        ("labels", lambda x: torch.zeros(x.shape[0], 4), r"returned shape \(2, 4\).*\(2,\) integer class indices"),
        ("labels", lambda x: torch.full((x.shape[0],), 0.5), r"\(2,\) integer class indices"),
        ("labels", lambda x: np.array([0, 9]), r"labels outside \[0, 4\)"),
        ("labels", lambda x: "cat", "not an array of answers"),
    ],
)
def test_function_answers_of_the_wrong_shape_or_kind_are_clear_errors(output: str, answer: Any, match: str) -> None:
    oracle = Oracle.from_function(answer, output=output, num_classes=4)
    with pytest.raises(ValueError, match=match):
        oracle.query(batch(2))


def test_function_oracles_take_lists_and_arrays() -> None:
    oracle = Oracle.from_function(lambda x: [1] * x.shape[0], output="labels", num_classes=2)
    assert oracle.query(batch(3)).tolist() == [1, 1, 1]
    scores = Oracle.from_function(lambda x: np.full((x.shape[0], 2), 0.5), output="scores", num_classes=2)
    assert scores.query(batch(2)).shape == (2, 2)


def test_a_label_oracle_handed_to_a_score_attack_is_a_clear_error() -> None:
    oracle = Oracle(Counted(), output="labels")
    with pytest.raises(ValueError, match=r"square needs class scores; this oracle answers labels only.*hsja"):
        square(oracle, batch(2), torch.tensor([0, 1]), eps=0.1)
    assert oracle.total_queries == 0
    r = hsja(oracle, batch(2), torch.tensor([0, 1]), eps=3.0, max_queries=30)  # a decision-based attack runs
    assert r.n_queries == oracle.total_queries > 0


def test_features_of_the_wrong_dimension_are_a_clear_error() -> None:
    model = advlab.create_model("mlp", in_shape=SHAPE, num_classes=10, hidden=(8,),
                                generator=torch.Generator().manual_seed(0))
    oracle = Oracle(model)
    with pytest.raises(ValueError, match=r"model takes \(1, 8, 8\).*unsqueeze\(1\)"):
        oracle.query(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 8, 8\).*reshape"):
        oracle.session(2).query(torch.rand(2, 64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"model takes \(1, 8, 8\)"):
        square(oracle, torch.rand(2, 1, 8, 9), torch.tensor([0, 1]), eps=0.1)
    assert oracle.total_queries == 0


def test_inputs_outside_the_bounds_are_refused() -> None:
    oracle = Oracle(Counted())
    with pytest.raises(ValueError, match="bounds"):
        oracle.query(batch(2) + 2.0)


def test_an_unfitted_scikit_learn_model_is_a_clear_error() -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    models = pytest.importorskip("advlab.models")
    if not hasattr(models, "from_sklearn"):
        pytest.skip("advlab.models.from_sklearn is not available")
    with pytest.raises(ValueError, match="fit"):
        Oracle(LogisticRegression())


def test_anything_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="from_function"):
        Oracle(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        Oracle.from_function(3, output="labels", num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown output"):
        Oracle(Counted(), output="logits")


def test_the_oracle_module_imports_on_its_own() -> None:
    """``advlab.oracle`` as the first advlab import (attacks import it, so it must not import them at load)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from advlab.oracle import Oracle; print(Oracle.__name__)"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Oracle"
