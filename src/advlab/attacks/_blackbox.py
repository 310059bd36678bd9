"""The engine of black-box attacks: attacks that see a model only through a query-counting
:class:`~advlab.oracle.Oracle` (class scores or the top-1 label), the counterpart of
:func:`~advlab.attacks.run_attack`.

An attack file supplies a *kernel* ``kernel(ctx, x, y, eps) -> x_adv`` that queries the oracle only
through its :class:`BlackBoxContext` and calls :func:`run_blackbox`. The engine validates the call as
:func:`run_attack` does, opens one :class:`~advlab.oracle.QuerySession` per call (one accounting row per
budget and example; the attack's ``max_queries`` and the oracle's own per-example budget, the smaller
applies), runs the kernel per chunk and budget (a minimum-norm kernel once, with the largest budget),
projects onto the ball, clips to the bounds and re-checks every result with :meth:`Oracle.verify`
(unmetered, counted apart). Kernels never exceed a budget: they ask :meth:`BlackBoxContext.affordable`
before each query, and an example whose budget is spent keeps the best point found so far.

Randomness is per example and per step: every draw is a pure function of a key made of the example's seed
(drawn once per call from the user's generator, :meth:`BlackBoxContext.example_seeds`), the example's step
and a stream number. Small draws hash the key with a vectorised counter-based generator
(:func:`counter_uniform`, :func:`counter_signs`); large ones (many samples of a whole input) seed one
``torch.Generator`` per example with it (:func:`keyed_normal`, :func:`keyed_signs`), many times faster there.
Either way example ``i`` at its step ``t`` receives the same numbers whatever the batch size and whichever
other examples are still running.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab.attacks._engine import assemble_result, validate_call
from advlab.attacks._mode import attack_mode, mismatch_hint, progress_callback
from advlab.attacks._random import PerExampleRandomness
from advlab.attacks._registry import attack_spec
from advlab.attacks._result import AttackResult
from advlab.attacks._validation import check_label_range, check_logits, logits_doubts
from advlab.attacks._warnings import warn_call
from advlab.oracle import Oracle, QueryBudgetError, QuerySession
from advlab.threat import LpBall, clip_to_bounds

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, exactly (no int64 overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (Wellons' "lowbias32") of int64 values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seeds: Tensor, step: Tensor | int, stream: int) -> Tensor:
    """``(M,)`` 32-bit keys of the examples' ``seeds`` at their ``step`` in ``stream``."""
    step_t = torch.as_tensor(step, dtype=torch.int64, device=seeds.device).expand(seeds.shape[0]) & _M32
    k = _mix32((seeds ^ _mul32(torch.full_like(seeds, stream + 1), _GOLDEN)) & _M32)
    return _mix32(k ^ _mul32(step_t, 0x85EBCA6B))


def counter_bits(seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int]) -> Tensor:
    """``(M, *shape)`` random 32-bit integers (int64) for the examples keyed by ``seeds`` ``(M,)`` at their
    ``step`` (an int or ``(M,)``) in the numbered ``stream``: a pure function of those, so each example gets
    the same numbers whatever else is in the batch."""
    count = math.prod(shape)
    keys = _keys(seeds, step, stream)
    j = _mul32(torch.arange(count, device=seeds.device, dtype=torch.int64), _GOLDEN)
    return _mix32(keys[:, None] ^ j[None, :]).reshape(seeds.shape[0], *shape)


def counter_uniform(
    seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform numbers in ``[0, 1)`` (24 random bits), shaped ``(M, *shape)`` (see :func:`counter_bits`)."""
    return (counter_bits(seeds, step, stream, shape) >> 8).to(dtype) * (2.0**-24)


def counter_normal(
    seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal numbers shaped ``(M, *shape)`` (Box-Muller on :func:`counter_uniform` pairs)."""
    count = math.prod(shape)
    half = (count + 1) // 2
    u = counter_uniform(seeds, step, stream, (2, half), torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]
    angle = 2 * math.pi * u[:, 1]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :count]
    return z.to(dtype).reshape(seeds.shape[0], *shape)


def counter_signs(
    seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Rademacher signs ``±1`` shaped ``(M, *shape)`` (see :func:`counter_bits`)."""
    return ((counter_bits(seeds, step, stream, shape) >> 31) * 2 - 1).to(dtype)


def _keyed(seeds: Tensor, step: Tensor | int, stream: int, draw: Callable[[torch.Generator], Tensor]) -> Tensor:
    """``draw(generator)`` for each example, its generator seeded by its key: one fast draw per example."""
    keys = _keys(seeds, step, stream).tolist()
    device = seeds.device
    out = [draw(torch.Generator(device=device).manual_seed(int(k))) for k in keys]
    return torch.stack(out) if out else torch.empty(0, device=device)


def keyed_normal(
    seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal numbers ``(M, *shape)``, a pure function of each example's key like
    :func:`counter_normal`, drawn by a generator per example: for large draws (many samples of a whole
    input), where it is many times faster than the counter-based hash."""
    device = seeds.device
    return _keyed(seeds, step, stream, lambda g: torch.randn(tuple(shape), generator=g, device=device, dtype=dtype))


def keyed_signs(
    seeds: Tensor, step: Tensor | int, stream: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Rademacher signs ``±1`` ``(M, *shape)`` drawn like :func:`keyed_normal`."""
    device = seeds.device
    return _keyed(seeds, step, stream, lambda g: torch.randint(
        0, 2, tuple(shape), generator=g, device=device).to(dtype).mul_(2).sub_(1))


class BlackBoxContext(PerExampleRandomness):
    """Handed to black-box kernels: the oracle's answers for the current chunk's examples, their budgets,
    the bounds and per-example randomness.

    Kernels name examples by their position in the chunk (``idx``, ``(M,)`` int64) and query only through
    :meth:`scores` (log-scores) or :meth:`decisions` (labels), after checking :meth:`affordable`: a query
    the budgets do not allow is never made, so no :class:`~advlab.oracle.QueryBudgetError` reaches a kernel.

    Attributes:
        bounds: the inputs' bounds. targeted: whether ``labels`` are targets. labels: the chunk's labels
            (targets when targeted). true_labels: the chunk's true classes of a targeted run, or ``None``.
    """

    def __init__(self, session: QuerySession, bounds: tuple[float, float], generator: torch.Generator | None,
                 targeted: bool, n: int) -> None:
        super().__init__(generator)
        self.session = session
        self.bounds = bounds
        self.targeted = targeted
        self.labels: Tensor = torch.empty(0, dtype=torch.long)
        self.true_labels: Tensor | None = None
        self._n = n
        self._offset = 0
        self._size = 0
        # what warn_call reads of a context (black-box attacks take no gradients)
        self.grad_vanished = 0
        self.grad_checked = 0

    def begin_chunk(self, x: Tensor, labels: Tensor, true_labels: Tensor | None, rows: slice) -> None:
        """Starts the chunk of rows ``rows`` of the call's batch, clean input ``x``."""
        self.labels, self.true_labels = labels, true_labels
        self._start, self._size = rows.start, rows.stop - rows.start
        self._begin_random_chunk(x, rows)

    def begin_run(self, run: int) -> None:
        """The kernel's next run (one per budget) is charged to accounting row ``run``."""
        self._offset = run * self._n + self._start

    def example_seeds(self) -> Tensor:
        """``(n,)`` int64 seeds of the chunk's examples for :func:`counter_uniform` and its kin, drawn per
        example from the call's generator (a kernel calls it once per run, before any data-dependent step)."""
        draw = self.random(lambda like, g: torch.randint(
            0, 2**32, (like.shape[0],), generator=g, device=g.device, dtype=torch.int64))
        return draw.rows().to(self.labels.device)

    def used(self, idx: Tensor | None = None) -> Tensor:
        """``(M,)`` queries made so far in this run for the chunk's examples ``idx`` (all by default)."""
        return self.session.queries[self._rows_of(idx).cpu()].to(self.labels.device)

    def remaining(self, idx: Tensor | None = None) -> Tensor:
        """``(M,)`` queries left in this run for the examples ``idx`` (per-example budgets only)."""
        return self.session.remaining(self._rows_of(idx).cpu()).to(self.labels.device)

    def affordable(self, idx: Tensor, cost: int | Tensor) -> Tensor:
        """``(M,)`` bool: which of the examples ``idx`` can pay ``cost`` more queries each (an int or ``(M,)``),
        under their own budgets and, in order, under the oracle's total budget."""
        cost_t = torch.as_tensor(cost, dtype=torch.int64, device=idx.device).expand(idx.shape[0])
        ok = self.remaining(idx) >= cost_t
        total = self.session.oracle.remaining_total
        if total is not None:
            spent = torch.cumsum(torch.where(ok, cost_t, 0), dim=0)
            ok &= spent <= total
        return ok

    def _rows_of(self, idx: Tensor | None) -> Tensor:
        local = torch.arange(self._size) if idx is None else idx.cpu()
        return local + self._offset

    def _query(self, x: Tensor, idx: Tensor) -> Tensor:
        try:
            return self.session.query(x, self._rows_of(idx))
        except QueryBudgetError as err:  # a kernel that skipped affordable(): a bug of the attack, not the user
            raise RuntimeError(f"a black-box kernel queried beyond its budget: {err}") from err

    def scores(self, x: Tensor, idx: Tensor) -> Tensor:
        """``(M, K)`` log-scores (the logits up to a constant per row) of the oracle for ``x`` ``(M, ...)``,
        row ``j`` charged to the chunk's example ``idx[j]``."""
        p = self._query(x, idx)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()

    def decisions(self, x: Tensor, idx: Tensor) -> Tensor:
        """``(M,)`` labels of the oracle for ``x``, row ``j`` charged to the chunk's example ``idx[j]``."""
        out = self._query(x, idx)
        return out.argmax(dim=1) if out.ndim == 2 else out

    def is_adversarial(self, pred: Tensor, idx: Tensor) -> Tensor:
        """``(M,)`` bool: labels ``pred`` of the examples ``idx`` meet the goal (another class than the true
        one, or the target)."""
        goal = self.labels[idx]
        return pred == goal if self.targeted else pred != goal

    def clip(self, x: Tensor) -> Tensor:
        """Clamps into the bounds."""
        return clip_to_bounds(x, self.bounds)


class BlackBoxKernel(Protocol):
    """A black-box attack's kernel: ``kernel(ctx, x, y, eps) -> x_adv`` for one chunk and one budget (a
    minimum-norm attack: once, with the largest budget)."""

    def __call__(self, ctx: BlackBoxContext, x: Tensor, y: Tensor, eps: float, /) -> Tensor: ...


def as_oracle(name: str, model: Oracle | nn.Module | Any, needs: str) -> Oracle:
    """``model`` if it is an :class:`Oracle` answering what the attack ``needs`` (``"scores"`` or
    ``"labels"``; a score oracle serves a decision-based attack too), else ``Oracle(model, output=needs)``."""
    if isinstance(model, Oracle):
        if needs == "scores" and model.output != "scores":
            raise ValueError(
                f"{name} needs class scores; this oracle answers labels only: use a decision-based attack such "
                f"as hsja, or Oracle(..., output='scores')"
            )
        return model
    return Oracle(model, output=needs)


def run_blackbox(
    name: str,
    model: Oracle | nn.Module | Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str,
    kernel: BlackBoxKernel,
    config: Any,
    needs: str,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Validates, runs the black-box ``kernel`` per chunk and budget against an oracle, and assembles a
    re-checked :class:`AttackResult` with per-example query counts.

    Args:
        name: the attack's registered name (its norms and whether it is minimum-norm come from there).
        model: an :class:`~advlab.oracle.Oracle`, or a model (a module returning logits, a fitted
            scikit-learn classifier) put behind ``Oracle(model, output=needs)``.
        x / y / eps / norm / targeted / generator / batch_size / true_labels: as for
            :func:`~advlab.attacks.run_attack`.
        kernel: the attack's kernel (see :class:`BlackBoxKernel`).
        config: the attack's frozen config; its ``max_queries`` is the per-example budget of each run, the
            oracle's own ``max_queries`` applying too (the smaller wins).
        needs: ``"scores"`` (score-based attack) or ``"labels"`` (decision-based).

    Returns:
        An :class:`AttackResult` whose ``queries`` ``(B, N)`` holds each example's queries per budget,
        ``n_queries`` their total, and ``n_forward`` the queries plus the engine's unmetered evaluations (the
        clean inputs once, every result once).

    Raises:
        ValueError / TypeError: as :func:`run_attack`; a score-based attack handed a label-only oracle.
    """
    t0 = time.perf_counter()
    spec = attack_spec(name)
    oracle = as_oracle(name, model, needs)
    norm, budgets, y, targeted, true_labels = validate_call(
        spec, config, oracle.bounds, oracle.model, x, y, eps=eps, norm=norm, targeted=targeted,
        generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
    n, chunk = x.shape[0], batch_size or x.shape[0]
    runs = 1 if spec.min_norm else len(budgets)
    session = oracle.session(runs * n, max_queries=config.max_queries)
    ctx = BlackBoxContext(session, oracle.bounds, generator, targeted, n)
    ctx.begin_call(x)
    x_adv = torch.empty((len(budgets), *x.shape), dtype=x.dtype, device=x.device)
    adv_pred = torch.empty((len(budgets), n), dtype=torch.long, device=x.device)
    verified = oracle.verification_queries
    report = progress_callback()
    try:
        with attack_mode(oracle.model) if oracle.model is not None else nullcontext():
            raw = torch.cat([oracle.inspect(x[i : i + chunk]) for i in range(0, n, chunk)])
            doubts = _check_clean(oracle, raw, y, true_labels)
            for start in range(0, n, chunk):
                rows = slice(start, min(start + chunk, n))
                xb, yb = x[rows].detach(), y[rows]
                ctx.begin_chunk(xb, yb, None if true_labels is None else true_labels[rows], rows)
                found = None
                if spec.min_norm and max(budgets) > 0:
                    ctx.begin_run(0)
                    found = kernel(ctx, xb, yb, max(budgets))
                for i, e in enumerate(budgets):
                    if e == 0.0:
                        x_adv[i, rows] = xb
                        continue
                    if found is None:
                        ctx.begin_run(i)
                    cand = found if found is not None else kernel(ctx, xb, yb, e)
                    x_adv[i, rows] = ctx.clip(xb + LpBall(norm, e).project(cand.detach() - xb))
                if report is not None:
                    report(rows.stop, n)
            for i in range(len(budgets)):
                for start in range(0, n, chunk):
                    adv_pred[i, start : start + chunk] = oracle.verify(x_adv[i, start : start + chunk])
    except RuntimeError as err:
        hint = None if oracle.model is None else mismatch_hint(oracle.model, x)
        if hint is not None:
            raise TypeError(hint) from err
        raise
    clean_pred = raw.argmax(dim=1) if raw.ndim == 2 else raw
    queries = session.queries.view(runs, n).to(x.device)
    if spec.min_norm:
        queries = queries.expand(len(budgets), n).clone()
    n_queries = int(session.queries.sum())
    result = assemble_result(
        name, config, x, x_adv, adv_pred, y, clean_pred, norm=norm, budgets=budgets, targeted=targeted,
        true_labels=true_labels, batch_size=batch_size,
        n_forward=n_queries + oracle.verification_queries - verified, n_backward=0, n_queries=n_queries, t0=t0,
        queries=queries,
    )
    warn_call(name, n, doubts, ctx, result.n_already_at_target)
    return result


def _check_clean(oracle: Oracle, raw: Tensor, y: Tensor, true_labels: Tensor | None) -> list[str]:
    """Checks the oracle's raw answer on the clean inputs (a module's logits: not probabilities; labels in
    range) and returns the doubts about a module's logits."""
    if raw.ndim == 2:
        if oracle.model is not None:
            check_logits(raw, y.shape[0])
        check_label_range(raw, labels=y, true_labels=true_labels)
        return logits_doubts(raw) if oracle.model is not None else []
    k = oracle.num_classes or 0
    check_label_range(torch.empty(1, k), labels=y, true_labels=true_labels)
    return []
