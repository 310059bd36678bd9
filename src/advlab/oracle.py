"""Query-counting oracles: what a deployed model gives away, and nothing more.

A black-box attacker sees a model only through its answers: class scores (a score-based attack) or the top-1
label alone (a decision-based attack or a substitute model's training). :class:`Oracle` puts any model behind
such an interface, counts every query, per example and in total, and enforces query budgets: a query that
would exceed a budget is refused with :class:`QueryBudgetError` before the model is evaluated, so no attack
can see an answer it has not paid for, nor gradients or logits the oracle does not give.

The model behind an oracle may be a PyTorch module returning logits (``advlab.Classifier``, a zoo model), a
fitted scikit-learn classifier (converted with :func:`advlab.models.from_sklearn`), or any function that
returns scores ``(N, K)`` or labels ``(N,)`` (a remote API, say) through :meth:`Oracle.from_function`.

Per-example accounting: an attack opens a :class:`QuerySession` over its ``N`` examples
(:meth:`Oracle.session`) and names, with every query, the example each queried input belongs to; the session
counts queries per example and refuses any beyond the per-example budget. Queries made without a session
(:meth:`Oracle.query`, e.g. to label a substitute model's training points) count toward the total only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_choice, check_int, check_optional

OUTPUTS = ("scores", "labels")
# A module answers a large query (e.g. all the samples of a gradient estimate) in chunks of at most this many
# rows per device type: a CPU slows down on batches whose activations leave its caches (cnn-small on MNIST:
# 6,400 rows at once took twice as long as in chunks of 128); a GPU gains from large batches.
EVAL_CHUNK: dict[str, int] = {"cpu": 128, "cuda": 4096}


class QueryBudgetError(RuntimeError):
    """A query that would exceed the oracle's per-example or total budget; the model was not evaluated."""


class Oracle:
    """A model behind a query interface that answers scores or labels and counts every query.

    Args:
        model: a module mapping inputs ``(N, ...)`` within its ``bounds`` to logits ``(N, K)``, or a fitted
            scikit-learn classifier (converted by :func:`advlab.models.from_sklearn`; give ``in_shape`` through
            :func:`~advlab.models.from_sklearn` yourself for image-shaped inputs).
        output: ``"scores"`` (default): the softmax probabilities ``(N, K)``, what a prediction API returns;
            ``"labels"``: the top-1 class ``(N,)`` alone.
        max_queries: per-example budget (queries a :class:`QuerySession` may make for one example), or
            ``None`` for no limit.
        max_total_queries: budget over all queries of the oracle's life, or ``None``.

    Attributes:
        total_queries: inputs answered so far (every session and :meth:`query` together).
        verification_queries: inputs classified by :meth:`verify` (the evaluator's re-check of an attack's
            result, not charged to the attacker).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> oracle = Oracle(model, output="labels", max_queries=3)
        >>> session = oracle.session(4)
        >>> session.query(torch.rand(2, 1, 8, 8), torch.tensor([0, 2])).shape
        torch.Size([2])
        >>> session.queries.tolist(), oracle.total_queries
        ([1, 0, 1, 0], 2)
    """

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        output: str = "scores",
        max_queries: int | None = None,
        max_total_queries: int | None = None,
    ) -> None:
        self.output = check_choice("output", output, OUTPUTS)
        self.max_queries = check_optional("max_queries", max_queries, check_int, minimum=1)
        self.max_total_queries = check_optional("max_total_queries", max_total_queries, check_int, minimum=1)
        if not isinstance(model, nn.Module):
            if hasattr(model, "predict") and hasattr(model, "fit"):
                from advlab.models import from_sklearn

                model = from_sklearn(model)
            else:
                raise TypeError(
                    f"an Oracle wraps a torch module or a fitted scikit-learn classifier, got "
                    f"{type(model).__name__}; wrap a function with Oracle.from_function(fn, output=...)"
                )
        self.model: nn.Module | None = model
        self._fn: Callable[[Tensor], Any] | None = None
        self.bounds: tuple[float, float] = _bounds_of(model)
        self.num_classes: int | None = None
        self.total_queries = 0
        self.verification_queries = 0

    @classmethod
    def from_function(
        cls,
        fn: Callable[[Tensor], Any],
        *,
        output: str,
        num_classes: int,
        bounds: tuple[float, float] = (0.0, 1.0),
        max_queries: int | None = None,
        max_total_queries: int | None = None,
    ) -> Oracle:
        """An oracle over a function: ``fn(x)`` returns scores ``(N, K)`` (``output="scores"``) or labels
        ``(N,)`` (``output="labels"``), as a tensor, a NumPy array or a list; every answer is checked.

        Example:
            >>> import torch
            >>> oracle = Oracle.from_function(lambda x: (x.flatten(1).mean(1) > 0.5).long(), output="labels",
            ...                               num_classes=2)
            >>> oracle.query(torch.full((3, 1, 2, 2), 0.9)).tolist()
            [1, 1, 1]
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        oracle = cls.__new__(cls)
        oracle.output = check_choice("output", output, OUTPUTS)
        oracle.max_queries = check_optional("max_queries", max_queries, check_int, minimum=1)
        oracle.max_total_queries = check_optional("max_total_queries", max_total_queries, check_int, minimum=1)
        oracle.model, oracle._fn = None, fn
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
        oracle.bounds = (low, high)
        oracle.num_classes = check_int("num_classes", num_classes, minimum=2)
        oracle.total_queries = 0
        oracle.verification_queries = 0
        return oracle

    def __repr__(self) -> str:
        return (
            f"Oracle(output={self.output!r}, max_queries={self.max_queries}, "
            f"max_total_queries={self.max_total_queries}, total_queries={self.total_queries})"
        )

    @property
    def remaining_total(self) -> int | None:
        """Queries left under ``max_total_queries`` (``None``: no total budget)."""
        return None if self.max_total_queries is None else self.max_total_queries - self.total_queries

    def query(self, x: Tensor) -> Tensor:
        """Answers ``x`` ``(N, ...)``: scores ``(N, K)`` or labels ``(N,)``; counts ``N`` queries toward the
        total. Raises :class:`QueryBudgetError` (without evaluating) when the total budget would be exceeded."""
        x = self._checked(x)
        self._charge_total(x.shape[0])
        return self._answer(x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.query(x)

    def session(self, n: int, *, max_queries: int | None = None) -> QuerySession:
        """Per-example accounting over ``n`` examples; ``max_queries`` tightens the oracle's own per-example
        budget for this session (the smaller one applies)."""
        n = check_int("n", n, minimum=0)
        budget = check_optional("max_queries", max_queries, check_int, minimum=1)
        if self.max_queries is not None:
            budget = self.max_queries if budget is None else min(budget, self.max_queries)
        return QuerySession(self, n, budget)

    def verify(self, x: Tensor) -> Tensor:
        """The labels of ``x``, for the evaluator's re-check of a finished attack: not charged to any budget,
        counted in :attr:`verification_queries`. Attacks must not call it."""
        out = self.inspect(x)
        return out.argmax(dim=1) if out.ndim == 2 else out

    def inspect(self, x: Tensor) -> Tensor:
        """The evaluator's unmetered view of the model's raw answer to ``x``: the logits ``(N, K)`` of a
        module, the function's checked scores ``(N, K)`` or labels ``(N,)``; counted in
        :attr:`verification_queries`, charged to no budget. Attacks must not call it."""
        x = self._checked(x)
        self.verification_queries += x.shape[0]
        return self._raw(x)

    def _checked(self, x: Tensor) -> Tensor:
        x = check_batch(x, self.bounds)
        if self.model is not None:
            from advlab.attacks._validation import check_input_shape  # here: attacks import this module

            check_input_shape(self.model, x)
        return x

    def _charge_total(self, count: int) -> None:
        if self.max_total_queries is not None and self.total_queries + count > self.max_total_queries:
            raise QueryBudgetError(
                f"{count} more queries would exceed the oracle's total budget of {self.max_total_queries} "
                f"({self.total_queries} used)"
            )
        self.total_queries += count

    def _raw(self, x: Tensor) -> Tensor:
        """The model's answer, checked: logits ``(N, K)`` of a module, or the function's scores/labels."""
        n = x.shape[0]
        if self.model is not None:
            step = EVAL_CHUNK.get(x.device.type, n) or n
            with torch.no_grad():
                was_training = self.model.training
                if was_training:
                    self.model.eval()
                try:
                    out = self.model(x) if n <= step else torch.cat([self.model(x[i : i + step])
                                                                     for i in range(0, n, step)])
                finally:
                    if was_training:
                        self.model.train()
            if out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for {n} inputs; expected (N, K)")
            if self.num_classes is None:
                self.num_classes = int(out.shape[1])
            return out.detach()
        assert self._fn is not None
        out = _as_tensor(self._fn(x), x.device)
        k = self.num_classes
        if self.output == "labels":
            if out.shape != (n,) or (out.dtype.is_floating_point and not bool((out == out.round()).all())):
                raise ValueError(
                    f"the oracle function returned {_describe(out)} for {n} inputs; a label oracle must return "
                    f"({n},) integer class indices"
                )
            out = out.long()
            if n and (int(out.min()) < 0 or int(out.max()) >= (k or 0)):
                raise ValueError(f"the oracle function returned labels outside [0, {k}) for {n} inputs")
        elif out.ndim != 2 or out.shape != (n, k) or not out.is_floating_point():
            raise ValueError(
                f"the oracle function returned {_describe(out)} for {n} inputs; a score oracle must return "
                f"({n}, {k}) float scores"
            )
        elif not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
            raise ValueError(
                "the oracle function returned negative, NaN or inf scores; a score oracle returns class "
                "probabilities (or other non-negative scores), e.g. softmax(logits)"
            )
        return out

    def _answer(self, x: Tensor) -> Tensor:
        out = self._raw(x)
        if self.output == "labels":
            return out.argmax(dim=1) if out.ndim == 2 else out
        if self.model is not None:
            return torch.softmax(out.double(), dim=1).to(out.dtype)
        return out


class QuerySession:
    """Per-example query accounting of one attack call over ``n`` examples (see :meth:`Oracle.session`).

    Attributes:
        queries: ``(n,)`` int64 queries made for each example so far.
        max_queries: the per-example budget of the session (``None``: none).
    """

    def __init__(self, oracle: Oracle, n: int, max_queries: int | None) -> None:
        self.oracle = oracle
        self.n = n
        self.max_queries = max_queries
        self.queries = torch.zeros(n, dtype=torch.int64)

    @property
    def output(self) -> str:
        """What the oracle answers: ``"scores"`` or ``"labels"``."""
        return self.oracle.output

    def remaining(self, index: Tensor | None = None) -> Tensor:
        """Queries left for the examples ``index`` (all by default); a large number where unlimited."""
        q = self.queries if index is None else self.queries[index.cpu()]
        if self.max_queries is None:
            return torch.full_like(q, torch.iinfo(torch.int64).max // 2)
        return self.max_queries - q

    def query(self, x: Tensor, index: Tensor) -> Tensor:
        """Answers ``x`` ``(M, ...)`` whose row ``j`` belongs to example ``index[j]`` (``(M,)``, indices in
        ``[0, n)``, repeats allowed); charges one query per row to its example. Raises
        :class:`QueryBudgetError` before evaluating anything if an example would exceed its budget."""
        x = self.oracle._checked(x)
        idx = torch.as_tensor(index).reshape(-1).cpu().long()
        if idx.shape[0] != x.shape[0]:
            raise ValueError(f"index names {idx.shape[0]} examples for {x.shape[0]} queried inputs")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise ValueError(f"index must hold example numbers in [0, {self.n})")
        add = torch.bincount(idx, minlength=self.n)
        if self.max_queries is not None and bool((self.queries + add > self.max_queries).any()):
            bad = int(((self.queries + add) > self.max_queries).nonzero()[0, 0])
            raise QueryBudgetError(
                f"example {bad} would make {int(self.queries[bad] + add[bad])} queries, over its budget of "
                f"{self.max_queries}"
            )
        self.oracle._charge_total(x.shape[0])
        self.queries += add
        return self.oracle._answer(x)


def _bounds_of(model: object) -> tuple[float, float]:
    bounds = getattr(model, "bounds", (0.0, 1.0))
    return float(bounds[0]), float(bounds[1])


def _as_tensor(value: Any, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device)
    try:
        return torch.as_tensor(np.asarray(value), device=device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the oracle function returned {type(value).__name__}, not an array of answers") from err


def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)} ({t.dtype})"
