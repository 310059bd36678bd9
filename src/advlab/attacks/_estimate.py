"""Gradient estimation from scores: NES (antithetic Gaussian samples) and SPSA (Rademacher samples), as a
drop-in gradient source for every gradient attack (:class:`EstimatedGradients`) and as the registered
black-box attacks ``nes`` (projected gradient ascent on NES estimates) and ``spsa`` (Adam on SPSA estimates).

References: Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
Information", ICML 2018 (NES); Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and the Dangers of
Evaluating Against Weak Attacks", ICML 2018 (SPSA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_choice, check_float, check_int, check_optional
from advlab.attacks._blackbox import (
    BlackBoxContext,
    BlackBoxKernel,
    keyed_normal,
    keyed_signs,
    run_blackbox,
)
from advlab.attacks._losses import LOSSES, objective
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult
from advlab.oracle import Oracle
from advlab.threat import LpBall, clip_to_bounds

METHODS = ("nes", "spsa")


def estimate_jacobian_product(
    query: Callable[[Tensor], Tensor], x: Tensor, directions: Tensor, scale: float, bounds: tuple[float, float],
) -> Callable[[Tensor], Tensor]:
    """Queries ``x ± scale * u`` for the directions ``u`` ``(M, S, ...)`` (one query of ``2 S M`` rows, clipped
    to ``bounds``) and returns ``vjp(v)``: the estimate of ``J(x)^T v`` for ``v`` ``(M, K)``, ``J`` the Jacobian of
    the queried outputs, as ``mean_s u_s <v, f(x + c u_s) - f(x - c u_s)> / (2c)`` (``E[u u^T] = I`` for both
    sample kinds)."""
    m, s = directions.shape[:2]
    plus = clip_to_bounds(x[:, None] + scale * directions, bounds)
    minus = clip_to_bounds(x[:, None] - scale * directions, bounds)
    out = query(torch.cat([plus, minus], dim=1).reshape(m * 2 * s, *x.shape[1:]))
    diff = (out.view(m, 2, s, -1)[:, 0] - out.view(m, 2, s, -1)[:, 1]) / (2 * scale)  # (M, S, K)

    def vjp(v: Tensor) -> Tensor:
        weights = torch.einsum("msk,mk->ms", diff, v.to(diff.dtype)).to(directions.dtype)
        return torch.einsum("ms,ms...->m...", weights, directions) / s

    return vjp


class _Estimated(torch.autograd.Function):
    """Forward: the oracle's log-scores. Backward: the estimated vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, module: EstimatedGradients) -> Tensor:
        ctx.module = module
        ctx.save_for_backward(x)
        return module.log_scores(x.detach())

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        module: EstimatedGradients = ctx.module
        return module.vjp(x.detach(), grad_out), None


class EstimatedGradients(nn.Module):
    """A score oracle as a differentiable model whose gradients are estimated from queries: a drop-in gradient
    source that turns every gradient attack into a black-box attack.

    ``forward(x)`` returns the oracle's log-scores ``(N, K)`` (the logits up to a constant per row) for one
    query per example; differentiating any loss of them through ``torch.autograd`` estimates the
    vector-Jacobian product from ``2 * samples`` more queries per example: the Jacobian of the log-scores is
    estimated from antithetic samples ``x ± sigma u`` (NES: ``u`` Gaussian, Ilyas et al. 2018; SPSA: ``u``
    Rademacher, Uesato et al. 2018), so every loss of the logits gets its gradient from the same samples.
    Every query is counted by the oracle (``oracle.total_queries``): a gradient attack of ``n_forward`` forward
    and ``n_backward`` backward passes costs ``n_forward + 2 * samples * n_backward`` queries.

    Args:
        oracle: an :class:`~advlab.oracle.Oracle` answering scores (a model is put behind one).
        method: ``"nes"`` (default) or ``"spsa"``.
        samples: antithetic pairs per gradient (default 50, Ilyas et al.'s 100 evaluations).
        sigma: the finite-difference scale in input units (default 0.001, NES's; SPSA's delta is 0.01).
        generator: randomness of the samples (drawn per batch: the result depends on the batch size).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> oracle = advlab.Oracle(model)
        >>> r = advlab.attacks.pgd(EstimatedGradients(oracle, samples=10), torch.rand(2, 1, 8, 8),
        ...                        torch.arange(2), eps=0.3, steps=3, generator=torch.Generator().manual_seed(0))
        >>> oracle.total_queries == r.n_forward + 2 * 10 * r.n_backward
        True
    """

    def __init__(
        self, oracle: Oracle | nn.Module | Any, method: str = "nes", samples: int = 50, sigma: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.oracle = oracle if isinstance(oracle, Oracle) else Oracle(oracle, output="scores")
        if self.oracle.output != "scores":
            raise ValueError("EstimatedGradients needs class scores; this oracle answers labels only: use "
                             "Oracle(..., output='scores') or a decision-based attack such as hsja")
        self.method = check_choice("method", method, METHODS)
        self.samples = check_int("samples", samples)
        self.sigma = check_float("sigma", sigma, inclusive=False)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        self.bounds = self.oracle.bounds
        if self.oracle.model is not None and hasattr(self.oracle.model, "model_config"):
            self.model_config = self.oracle.model.model_config

    def log_scores(self, x: Tensor) -> Tensor:
        """The oracle's log-scores of ``x`` (one query per row)."""
        p = self.oracle.query(x)
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()

    def vjp(self, x: Tensor, v: Tensor) -> Tensor:
        """The estimate of ``J(x)^T v`` (``2 * samples`` queries per row of ``x``)."""
        shape = (x.shape[0], self.samples, *x.shape[1:])
        g = self.generator
        device = g.device if g is not None else x.device
        if self.method == "nes":
            u = torch.randn(shape, generator=g, device=device, dtype=x.dtype)
        else:
            u = torch.randint(0, 2, shape, generator=g, device=device).to(x.dtype).mul_(2).sub_(1)
        return estimate_jacobian_product(self.log_scores, x, u.to(x.device), self.sigma, self.bounds)(v)

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return self.log_scores(x)
        out: Tensor = _Estimated.apply(x, self)
        return out


# ---------------------------------------------------------------- the registered attacks


def _estimates(ctx: BlackBoxContext, method: str, x: Tensor, idx: Tensor, seeds: Tensor, step: int,
               samples: int, scale: float, loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """The estimated gradient of ``loss(log-scores, idx)`` at ``x`` ``(M, ...)`` for the chunk's examples
    ``idx``, from ``2 * samples`` queries each (randomness keyed by each example's seed and ``step``)."""
    shape = (samples, *x.shape[1:])
    draw = keyed_normal if method == "nes" else keyed_signs
    u = draw(seeds, step, 0, shape, x.dtype)
    rows = idx.repeat_interleave(2 * samples)
    m = x.shape[0]
    plus = ctx.clip(x[:, None] + scale * u)
    minus = ctx.clip(x[:, None] - scale * u)
    out = ctx.scores(torch.cat([plus, minus], dim=1).reshape(m * 2 * samples, *x.shape[1:]), rows)
    per_row = loss(out, rows).view(m, 2, samples)
    weights = ((per_row[:, 0] - per_row[:, 1]) / (2 * scale)).to(x.dtype)
    return torch.einsum("ms,ms...->m...", weights, u) / samples


def _ascent_kernel(method: str, steps: int, samples: int, scale: float, loss_name: str,
                   update: Callable[..., Tensor]) -> BlackBoxKernel:
    """The loop shared by ``nes`` and ``spsa``: at each step one query at the current point (an adversarial
    point stops the example), ``2 * samples`` for the gradient, then ``update``; an example stops when it
    cannot pay a whole step."""

    def kernel(ctx: BlackBoxContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        seeds = ctx.example_seeds()
        n = x.shape[0]
        cur, done = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        state: dict[str, Tensor] = {}

        def loss(logscores: Tensor, rows: Tensor) -> Tensor:
            true = None if ctx.true_labels is None else ctx.true_labels[rows]
            return objective(loss_name, logscores, ctx.labels[rows], ctx.targeted, true)

        for t in range(steps):
            idx = (~done).nonzero().squeeze(1)
            idx = idx[ctx.affordable(idx, 1 + 2 * samples)]
            if idx.numel() == 0:
                break
            z = ctx.scores(cur[idx], idx)
            adv = ctx.is_adversarial(z.argmax(dim=1), idx)
            done[idx[adv]] = True
            idx = idx[~adv]
            if idx.numel() == 0:
                break
            grad = _estimates(ctx, method, cur[idx], idx, seeds[idx], t, samples, scale, loss)
            cur[idx] = update(ctx, x[idx], cur[idx], grad, idx, t, eps, state)
        return cur

    return kernel


@dataclass(frozen=True)
class NESConfig:
    """Hyper-parameters of the NES attack. ``step_size=None`` means ``eps / 4``."""

    max_queries: int = 10_000
    steps: int = 100
    samples: int = 50
    sigma: float = 0.001
    step_size: float | None = None
    loss: str = "ce"

    def __post_init__(self) -> None:
        check_int("max_queries", self.max_queries)
        check_int("steps", self.steps)
        check_int("samples", self.samples)
        check_float("sigma", self.sigma, inclusive=False)
        check_optional("step_size", self.step_size, check_float, inclusive=False)
        check_choice("loss", self.loss, LOSSES)


def _nes_kernel(config: NESConfig, norm: str) -> BlackBoxKernel:
    def update(ctx: BlackBoxContext, x: Tensor, cur: Tensor, grad: Tensor, idx: Tensor, t: int, eps: float,
               state: dict[str, Tensor]) -> Tensor:
        ball = LpBall(norm, eps)
        alpha = config.step_size if config.step_size is not None else eps / 4
        moved = cur + ball.steepest_step(grad, alpha)
        return ctx.clip(x + ball.project(moved - x))

    return _ascent_kernel("nes", config.steps, config.samples, config.sigma, config.loss, update)


@register_attack("nes", norms=("linf", "l2"), config=NESConfig)
def nes(
    model: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    max_queries: int = 10_000,
    steps: int = 100,
    samples: int = 50,
    sigma: float = 0.001,
    step_size: float | None = None,
    loss: str = "ce",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Projected gradient ascent on NES gradient estimates from class scores (Ilyas et al. 2018).

    Score-based black-box attack: the gradient of the loss of the oracle's log-scores is estimated from
    ``samples`` antithetic pairs ``x ± sigma u``, ``u`` standard Gaussian:
    ``g = mean_i u_i (L(x + sigma u_i) - L(x - sigma u_i)) / (2 sigma)``, and PGD takes a steepest-ascent step
    (``sign(g)`` for L∞, ``g / ||g||`` for L2) of ``step_size``, projected onto the ball and the bounds.
    Targeted: descends the loss of the target. Cost per step and example: one query at the current point
    (an adversarial point stops the example: early exit) and ``2 * samples`` for the estimate; an example
    stops when its budget cannot pay a whole step, keeping its last point.

    Threat model: L∞ or L2 ball of radius ``eps`` intersected with the bounds.

    Args:
        model: an :class:`~advlab.oracle.Oracle` answering scores, or a model returning logits. x: ``(N, ...)``.
            y: ``(N,)`` labels (targets when ``targeted``). eps: budget(s). norm: ``linf`` (default) or ``l2``.
            max_queries: per example and budget (default 10,000, the paper's query-limited setting).
            steps: at most this many steps (default 100). samples: antithetic pairs per estimate (default 50:
            100 queries, as in the paper). sigma: sampling scale (default 0.001). step_size: ``None`` is
            ``eps / 4``. loss: ``ce`` (default), ``margin`` or ``dlr`` on the log-scores. generator: randomness,
            per example; same seed, same result whatever the batch size. batch_size: chunk size. true_labels:
            true classes of a targeted run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.nes(model, torch.rand(3, 1, 8, 8), torch.arange(3), eps=0.3, samples=5,
        ...                        max_queries=40, generator=torch.Generator().manual_seed(0))
        >>> bool((r.queries <= 40).all())
        True
    """
    config = NESConfig(max_queries=max_queries, steps=steps, samples=samples, sigma=sigma, step_size=step_size,
                       loss=loss)
    return run_blackbox(
        "nes", model, x, y, eps=eps, norm=norm, kernel=_nes_kernel(config, norm), config=config, needs="scores",
        targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )


@dataclass(frozen=True)
class SPSAConfig:
    """Hyper-parameters of the SPSA attack (Adam on SPSA estimates). ``lr=None`` means ``eps / 10``."""

    max_queries: int = 10_000
    steps: int = 100
    samples: int = 64
    delta: float = 0.01
    lr: float | None = None
    loss: str = "margin"

    def __post_init__(self) -> None:
        check_int("max_queries", self.max_queries)
        check_int("steps", self.steps)
        check_int("samples", self.samples)
        check_float("delta", self.delta, inclusive=False)
        check_optional("lr", self.lr, check_float, inclusive=False)
        check_choice("loss", self.loss, LOSSES)


_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


def _spsa_kernel(config: SPSAConfig, norm: str) -> BlackBoxKernel:
    def update(ctx: BlackBoxContext, x: Tensor, cur: Tensor, grad: Tensor, idx: Tensor, t: int, eps: float,
               state: dict[str, Tensor]) -> Tensor:
        if "m" not in state:  # Adam's moments per example of the chunk, and its step count per example
            n = ctx.labels.shape[0]
            state["m"] = torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
            state["v"] = torch.zeros_like(state["m"])
            state["k"] = torch.zeros(n, dtype=torch.int64, device=x.device)
        b1, b2 = _BETAS
        state["k"][idx] += 1
        k = state["k"][idx].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        m = state["m"][idx] = b1 * state["m"][idx] + (1 - b1) * grad
        v = state["v"][idx] = b2 * state["v"][idx] + (1 - b2) * grad * grad
        lr = config.lr if config.lr is not None else eps / 10
        step = lr * (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + _ADAM_EPS)
        return ctx.clip(x + LpBall(norm, eps).project(cur + step - x))

    return _ascent_kernel("spsa", config.steps, config.samples, config.delta, config.loss, update)


@register_attack("spsa", norms=("linf",), config=SPSAConfig)
def spsa(
    model: Oracle | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    max_queries: int = 10_000,
    steps: int = 100,
    samples: int = 64,
    delta: float = 0.01,
    lr: float | None = None,
    loss: str = "margin",
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """Adam on SPSA gradient estimates from class scores, projected onto the L∞ ball (Uesato et al. 2018).

    Score-based black-box attack: the gradient of the loss (by default the margin of the log-scores,
    ``max_{j≠y} z_j - z_y``, as in the paper) is estimated from ``samples`` pairs ``x ± delta v``, ``v``
    Rademacher: ``g = mean_i v_i (L(x + delta v_i) - L(x - delta v_i)) / (2 delta)``; Adam (``lr``, betas 0.9
    and 0.999) ascends it, each iterate projected onto the ball and the bounds. Cost per step and example: one
    query at the current point (an adversarial point stops the example) and ``2 * samples`` for the estimate.

    Threat model: L∞ ball of radius ``eps`` intersected with the bounds.

    Args:
        model: an :class:`~advlab.oracle.Oracle` answering scores, or a model returning logits. x: ``(N, ...)``.
            y: ``(N,)`` labels (targets when ``targeted``). eps: budget(s). norm: ``linf``. max_queries: per
            example and budget (default 10,000). steps: at most this many Adam steps (default 100). samples:
            Rademacher pairs per estimate (default 64: 128 evaluations). delta: perturbation size (default
            0.01). lr: Adam's learning rate in input units; ``None`` (default) is ``eps / 10`` (Adam's first
            steps move each coordinate by about ``lr``: the paper's 0.01 at CIFAR-10's 8/255 is ``eps / 3``).
            loss: ``margin`` (default), ``ce`` or ``dlr``. generator: randomness, per example; same seed, same
            result whatever the batch size. batch_size: chunk size. true_labels: true classes of a targeted run.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.spsa(model, torch.rand(3, 1, 8, 8), torch.arange(3), eps=0.3, samples=4,
        ...                         max_queries=30, generator=torch.Generator().manual_seed(0))
        >>> r.n_queries == int(r.queries.sum()) and bool((r.queries <= 30).all())
        True
    """
    config = SPSAConfig(max_queries=max_queries, steps=steps, samples=samples, delta=delta, lr=lr, loss=loss)
    return run_blackbox(
        "spsa", model, x, y, eps=eps, norm=norm, kernel=_spsa_kernel(config, norm), config=config,
        needs="scores", targeted=targeted, generator=generator, batch_size=batch_size, true_labels=true_labels,
    )
