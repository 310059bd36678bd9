"""The attack engine shared by every attack: validation, budgets, batching, cost accounting, re-checks.

An attack file supplies a *kernel* and calls :func:`run_attack`:

- a fixed-budget kernel ``kernel(ctx, x, y, eps) -> x_adv`` is run once per budget (``eps = 0`` is
  short-circuited to the identity);
- a minimum-norm kernel (``min_norm=True``) ``kernel(ctx, x, y, max_eps) -> x_adv`` is run once; every budget
  is then filled by projecting its perturbation onto that budget's ball.

Either way the engine projects onto the ball, clips to the bounds and re-checks success with one more
forward pass: a result never trusts the kernel's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab._registry import Registry
from advlab.models.classifier import Classifier, unchecked_inputs
from advlab.threat import LpBall, check_norm, clip_to_bounds, is_adversarial


@dataclass
class AttackResult:
    """What an attack returns: adversarial inputs and their verdicts for every budget.

    Attributes:
        attack: registered name of the attack.
        eps: the budgets, in raw input units.
        norm: ``linf``, ``l2`` or ``l1``.
        targeted: whether ``labels`` are target classes.
        labels: ``(N,)`` true classes (untargeted) or targets (targeted).
        x_adv: ``(B, N, ...)`` adversarial inputs, one slice per budget, inside the ball and the bounds.
        success: ``(B, N)`` bool, re-checked by the engine on ``x_adv``.
        norms: ``(B, N)`` perturbation norms ``||x_adv - x||_p``.
        clean_correct: ``(N,)`` bool. Untargeted: the clean prediction equals the true class. Targeted: it
            equals ``true_labels`` when those were given, else the clean input is not already the target.
        n_forward / n_backward: model evaluations / input-gradient computations, counted per example.
        n_queries: forward evaluations made as queries (equals ``n_forward`` for white-box attacks).
        seconds: wall time of the whole call.
        config: the attack's full configuration (hyper-parameters, norm, budgets, targeted, batch size).
    """

    attack: str
    eps: tuple[float, ...]
    norm: str
    targeted: bool
    labels: Tensor
    x_adv: Tensor
    success: Tensor
    norms: Tensor
    clean_correct: Tensor
    n_forward: int
    n_backward: int
    n_queries: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> Tensor:
        """``(B,)`` fraction of examples still classified correctly (untargeted runs only)."""
        if self.targeted:
            raise ValueError("robust accuracy is defined for untargeted runs; use success_rate for targeted ones")
        return (self.clean_correct[None, :] & ~self.success).float().mean(dim=1)

    @property
    def success_rate(self) -> Tensor:
        """``(B,)`` fraction of examples that are adversarial (hit the target when targeted)."""
        return self.success.float().mean(dim=1)

    def summary(self) -> list[dict[str, float]]:
        """One JSON-ready dict per budget: eps, robust_accuracy (untargeted), success_rate, median/mean norm
        of the successful examples (NaN when none succeeded)."""
        rows = []
        for i, e in enumerate(self.eps):
            ok = self.success[i]
            norms = self.norms[i][ok]
            row: dict[str, float] = {"eps": e, "success_rate": float(self.success_rate[i])}
            if not self.targeted:
                row["robust_accuracy"] = float(self.robust_accuracy[i])
            row["median_norm"] = float(norms.median()) if norms.numel() else math.nan
            row["mean_norm"] = float(norms.mean()) if norms.numel() else math.nan
            rows.append(row)
        return rows


class AttackContext:
    """Handed to kernels: the model, bounds, RNG and counted forward/gradient helpers.

    Kernels must evaluate the model only through :meth:`logits`, :meth:`forward` and :meth:`value_and_grad`
    so that cost accounting stays honest. Every evaluation is watched for the current chunk's clean input:
    the first one made there supplies the clean logits (validated on the spot), so an attack whose first
    step is taken at the clean input costs no separate clean forward pass.
    """

    def __init__(
        self, model: nn.Module | Callable[[Tensor], Tensor], bounds: tuple[float, float],
        generator: torch.Generator | None, targeted: bool,
    ) -> None:
        self.model = model
        self.bounds = bounds
        self.generator = generator
        self.targeted = targeted
        self.n_forward = 0
        self.n_backward = 0
        # The current chunk's ``true_labels`` (None when not given), for kernels whose targeted objective
        # needs both the target and the true class (e.g. targeted DLR).
        self.true_labels: Tensor | None = None
        # Per-chunk scratch space for kernels run once per budget (e.g. FGSM's gradient at the clean input).
        self.memo: dict[str, Any] = {}
        self._num_classes: int | None = None
        self._clean_x: Tensor | None = None
        self._clean_logits: Tensor | None = None
        self._check_clean: Callable[[Tensor], None] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (from the first evaluation; a one-example forward pass if none was made yet)."""
        if self._num_classes is None:
            assert self._clean_x is not None, "num_classes is known once a chunk has begun"
            self.logits(self._clean_x[:1])
        assert self._num_classes is not None
        return self._num_classes

    def begin_chunk(self, x: Tensor, check: Callable[[Tensor], None], true_labels: Tensor | None) -> None:
        """Starts a chunk with clean input ``x``; ``check(logits)`` validates its clean logits once seen."""
        self._clean_x, self._clean_logits, self._check_clean = x, None, check
        self.true_labels = true_labels
        self.memo = {}

    def clean_logits(self) -> Tensor:
        """The current chunk's clean logits: those seen during the kernel, else one forward pass now."""
        if self._clean_logits is None:
            assert self._clean_x is not None
            self.logits(self._clean_x)
        assert self._clean_logits is not None
        return self._clean_logits

    def _observe(self, x: Tensor, logits: Tensor) -> None:
        clean = self._clean_x
        is_clean = (
            clean is not None and self._clean_logits is None and x.shape == clean.shape
            and (x is clean or torch.equal(x, clean))
        )
        if is_clean and self._check_clean is not None:
            self._check_clean(logits.detach())  # the logits themselves, then the labels against them
        elif self._num_classes is None:
            check_logits(logits, x.shape[0])
        if self._num_classes is None:
            self._num_classes = logits.shape[1]
        if is_clean:
            self._clean_logits = logits.detach()

    def logits(self, x: Tensor) -> Tensor:
        """Forward pass without gradient tracking (counted)."""
        with torch.no_grad():
            out = self.model(x)
        self.n_forward += x.shape[0]
        self._observe(x, out)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Forward pass with gradient tracking (counted as a forward; count backward passes yourself in
        ``n_backward``). For kernels that need several gradients of one forward pass."""
        with torch.enable_grad():
            out = self.model(x)
        self.n_forward += x.shape[0]
        self._observe(x.detach(), out)
        return out

    def value_and_grad(
        self, x: Tensor, objective: Callable[[Tensor], Tensor], memo_key: str | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(objective(logits) (N,), d sum(objective) / dx, logits)``, counting one forward and one
        backward per example. Uses ``torch.autograd.grad`` so parameter ``.grad`` is never touched.

        With ``memo_key``, a result at the chunk's clean input is remembered under that key for the rest of
        the chunk (the key must identify ``objective``): kernels run once per budget then take their first
        gradient once."""
        key = None
        if memo_key is not None and self._clean_x is not None and x is self._clean_x:
            key = "value_and_grad:" + memo_key
            if key in self.memo:
                value, grad, logits = self.memo[key]
                return value, grad.clone(), logits  # kernels may modify the gradient in place
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(xg)
            self.n_forward += x.shape[0]
            self._observe(x, logits)
            value = objective(logits)
            (grad,) = torch.autograd.grad(value.sum(), xg)
        self.n_backward += x.shape[0]
        out = (value.detach(), grad.detach(), logits.detach())
        if key is not None:
            self.memo[key] = (out[0], out[1].clone(), out[2])
        return out

    def clip(self, x: Tensor) -> Tensor:
        """Clamps into the model's bounds."""
        return clip_to_bounds(x, self.bounds)


class Kernel(Protocol):
    def __call__(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor: ...


# ---------------------------------------------------------------- validation


def model_bounds(model: nn.Module | Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """The model's input bounds: ``Classifier.bounds``, else a ``bounds`` attribute, else ``(0, 1)``."""
    bounds = getattr(model, "bounds", (0.0, 1.0))
    return float(bounds[0]), float(bounds[1])


def validate_eps(eps: float | Sequence[float]) -> tuple[float, ...]:
    """Normalises ``eps`` to a non-empty tuple of finite non-negative floats."""
    values: Any
    if isinstance(eps, Tensor):
        values = eps.flatten().tolist()
    elif isinstance(eps, (int, float)) and not isinstance(eps, bool):
        values = [eps]
    else:
        values = eps
    if isinstance(values, (str, bytes, bool)) or not hasattr(values, "__iter__"):
        raise TypeError(f"eps must be a number or a sequence of numbers, got {type(eps).__name__}")
    out = []
    for e in values:
        if isinstance(e, bool) or not isinstance(e, (int, float)):
            raise TypeError(f"eps values must be numbers, got {e!r}")
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eps must be finite and non-negative, got {e}; budgets are in raw input units")
        out.append(float(e))
    if not out:
        raise ValueError("eps is empty; give at least one budget")
    return tuple(out)


def validate_inputs(x: Tensor, y: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Checks ``x`` (finite float batch within bounds, non-empty) and ``y`` (integer ``(N,)``); returns ``y``
    on ``x``'s device as int64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}; convert with x.float() and scale to bounds")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of shape (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch; pass at least one example")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; every input value must be finite")
    lo, hi = float(x.min()), float(x.max())
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise ValueError(
            f"x ranges over [{lo:.4g}, {hi:.4g}] but the model's bounds are {bounds}; pass raw "
            f"(un-normalised) inputs within the bounds"
        )
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def check_logits(logits: Tensor, n: int) -> None:
    """Rejects outputs that are not ``(N, K)`` finite logits, in particular probability rows."""
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape (N, K); got {tuple(logits.shape)} for N={n}")
    if logits.shape[1] < 2:
        raise ValueError("the model must return at least 2 class scores")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model returned NaN or inf logits on the clean inputs")
    rows_sum_to_one = torch.allclose(logits.sum(dim=1), torch.ones_like(logits[:, 0]), atol=1e-4)
    if bool((logits >= 0).all()) and rows_sum_to_one:
        raise ValueError(
            "the model returns probabilities (non-negative rows summing to 1), but attacks need logits; "
            "remove the final softmax (or wrap the model to return log-probabilities)"
        )


# ---------------------------------------------------------------- engine


def _model_state(model: Any) -> tuple[bool | None, list[tuple[nn.Parameter, bool]]]:
    if not isinstance(model, nn.Module):
        return None, []
    return model.training, [(p, p.requires_grad) for p in model.parameters()]


def _label_check(y: Tensor, true_labels: Tensor | None) -> Callable[[Tensor], None]:
    """Validates clean logits of a chunk and its labels against the number of classes they show."""

    def check(logits: Tensor) -> None:
        check_logits(logits, y.shape[0])
        k = logits.shape[1]
        for what, labels in (("labels", y), ("true_labels", true_labels)):
            if labels is not None and (int(labels.max()) >= k or int(labels.min()) < 0):
                raise ValueError(
                    f"{what} must be class indices in [0, {k - 1}] for this model, "
                    f"got values in [{int(labels.min())}, {int(labels.max())}]"
                )

    return check


def run_attack(
    name: str,
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str,
    kernel: Kernel,
    config: Any = None,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
    min_norm: bool = False,
    norms: tuple[str, ...] = ("linf", "l2", "l1"),
    clean_first: bool = False,
) -> AttackResult:
    """Validates, runs ``kernel`` per batch and budget, and assembles a re-checked :class:`AttackResult`.

    Args:
        name: the attack's registered name (recorded in the result).
        model: maps inputs within its bounds to logits ``(N, K)``.
        x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)`` true classes, or targets when targeted.
        eps: one budget or a sequence of budgets (raw input units).
        norm: the threat model's norm; must be one of ``norms`` (those the attack supports).
        kernel: the attack's kernel (see module docstring).
        config: the attack's frozen dataclass of hyper-parameters (recorded in ``result.config``).
        targeted: whether ``y`` holds target classes.
        generator: source of randomness for random starts; same seed, same result.
        batch_size: split ``x`` into chunks of this many examples (default: all at once).
        true_labels: with ``targeted=True``, the true classes; a target equal to its true class is an error.
        min_norm: ``True`` for minimum-norm kernels run once and projected onto every budget.
        clean_first: the kernel's first evaluation is at the clean input itself (FGSM, BIM, MI-FGSM, DeepFool):
            the engine then takes the clean logits from it instead of running a forward pass of its own
            beforehand. Either way the clean logits are validated before the kernel uses them.
    """
    t0 = time.perf_counter()
    norm = check_norm(norm, norms)
    budgets = validate_eps(eps)
    bounds = model_bounds(model)
    y = validate_inputs(x, y, bounds)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if true_labels is not None:
        true_labels = validate_inputs(x, true_labels, bounds)
        if targeted and bool((true_labels == y).any()):
            bad = int((true_labels == y).nonzero()[0, 0])
            raise ValueError(
                f"targeted attack: the target of example {bad} equals its true label ({int(y[bad])}); "
                f"choose targets different from the true classes (e.g. threat.random_targets)"
            )
    training, grad_flags = _model_state(model)
    if isinstance(model, nn.Module):
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
    n = x.shape[0]
    chunk = batch_size or n
    x_adv = torch.empty((len(budgets), *x.shape), dtype=x.dtype, device=x.device)
    ctx = AttackContext(model, bounds, generator, targeted)
    clean_logits: list[Tensor] = []
    try:
        with unchecked_inputs(model) if isinstance(model, nn.Module) else _nullcontext():
            if isinstance(model, Classifier):
                model.validate(x)
            for start in range(0, n, chunk):
                xb, yb = x[start : start + chunk].detach(), y[start : start + chunk]
                tb = None if true_labels is None else true_labels[start : start + chunk]
                ctx.begin_chunk(xb, _label_check(yb, tb), tb)
                if not clean_first:
                    ctx.clean_logits()
                if min_norm:
                    found = kernel(ctx, xb, yb, max(budgets))
                for i, e in enumerate(budgets):
                    if e == 0.0:
                        x_adv[i, start : start + chunk] = xb
                        continue
                    cand = found if min_norm else kernel(ctx, xb, yb, e)
                    ball = LpBall(norm, e)
                    x_adv[i, start : start + chunk] = ctx.clip(xb + ball.project(cand.detach() - xb))
                clean_logits.append(ctx.clean_logits())
            # Re-check every budget on the final, clipped inputs.
            success = torch.empty((len(budgets), n), dtype=torch.bool, device=x.device)
            for i in range(len(budgets)):
                for start in range(0, n, chunk):
                    logits = ctx.logits(x_adv[i, start : start + chunk])
                    success[i, start : start + chunk] = is_adversarial(logits, y[start : start + chunk], targeted)
    finally:
        if isinstance(model, nn.Module) and training is not None:
            model.train(training)
            for p, flag in grad_flags:
                p.requires_grad_(flag)
    clean_pred = torch.cat(clean_logits).argmax(dim=1)
    clean_correct = clean_pred != y if targeted else clean_pred == y
    if targeted and true_labels is not None:
        clean_correct = clean_pred == true_labels
    lp = torch.stack([LpBall(norm, 0.0).distance(x, x_adv[i]) for i in range(len(budgets))])
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else {}
    cfg.update({"norm": norm, "eps": list(budgets), "targeted": targeted, "batch_size": batch_size})
    return AttackResult(
        attack=name, eps=budgets, norm=norm, targeted=targeted, labels=y, x_adv=x_adv.detach(),
        success=success, norms=lp, clean_correct=clean_correct, n_forward=ctx.n_forward,
        n_backward=ctx.n_backward, n_queries=ctx.n_forward, seconds=time.perf_counter() - t0, config=cfg,
    )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its function and what it supports."""

    name: str
    fn: Callable[..., AttackResult]
    norms: tuple[str, ...]
    targeted: bool
    min_norm: bool
    summary: str


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(
    name: str, *, norms: tuple[str, ...], targeted: bool = True, min_norm: bool = False
) -> Callable[[Callable[..., AttackResult]], Callable[..., AttackResult]]:
    """Registers an attack function under ``name`` with the norms it supports."""

    def decorator(fn: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
        doc = (fn.__doc__ or "").strip().splitlines()
        ATTACKS.register(name)(AttackSpec(name, fn, norms, targeted, min_norm, doc[0] if doc else ""))
        return fn

    return decorator


def get_attack(name: str) -> Callable[..., AttackResult]:
    """The attack function registered as ``name``."""
    return ATTACKS.get(name).fn


def attack_spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` registered as ``name``."""
    return ATTACKS.get(name)


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names()


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Validates an integer hyper-parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Validates a flag hyper-parameter."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_positive_float(name: str, value: object, allow_zero: bool = False) -> float:
    """Validates a float hyper-parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)
