"""Threat models: L_p balls, bounds clipping and attack criteria.

Budgets are always in raw input units (the units of the data before a ``Classifier`` normalises it).
A perturbation ``delta`` has the shape of the inputs, ``(N, ...)``; every norm is taken per example over
all non-batch dimensions.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
from torch import Tensor

Norm = Literal["linf", "l2", "l1", "l0"]
# The norms of continuous budgets (random starts and steepest steps exist), and every threat-model norm.
LP_NORMS: tuple[str, ...] = ("linf", "l2", "l1")
NORMS: tuple[str, ...] = (*LP_NORMS, "l0")
_TINY = 1e-12


def check_norm(norm: str, allowed: tuple[str, ...] = NORMS) -> str:
    """Returns ``norm`` if it is one of ``allowed``, else raises ``ValueError`` naming the valid ones."""
    if not isinstance(norm, str) or norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(allowed)}")
    return norm


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example L_p norm of ``delta`` (shape ``(N, ...)``) as a ``(N,)`` tensor."""
    flat = delta.reshape(delta.shape[0], math.prod(delta.shape[1:]))  # -1 is ambiguous for an empty batch
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(flat.dtype)
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def _check_batch(t: object, what: str, method: str) -> Tensor:
    """``t`` if it is a tensor with a batch dimension ``(N, ...)``; a single unbatched vector is refused
    rather than read as ``N`` one-feature examples."""
    if not isinstance(t, Tensor):
        raise TypeError(f"LpBall.{method}: {what} must be a torch.Tensor of shape (N, ...), got {type(t).__name__}")
    if t.ndim < 2:
        raise ValueError(
            f"LpBall.{method}: {what} must be a batch of shape (N, ...) with one example per row, got shape "
            f"{tuple(t.shape)}; for a single example add the batch dimension ({what}.unsqueeze(0))"
        )
    return t


def _check_per_example(value: float | Tensor, n: int, what: str) -> None:
    """A ``(N,)`` tensor ``value`` must have one entry per example of a batch of ``n``."""
    if isinstance(value, Tensor) and value.ndim == 1 and value.shape[0] != n:
        raise ValueError(
            f"per-example {what} has {value.shape[0]} values but the batch has {n} examples; give one value "
            f"per example (shape ({n},)) or a single number"
        )


def _per_example(value: float | Tensor, like: Tensor) -> float | Tensor:
    """Broadcasts a ``(N,)`` tensor to ``(N, 1, 1, ...)`` matching ``like``; a Python number stays a number
    (no tensor is created, so no host-to-device copy per call)."""
    if not isinstance(value, Tensor):
        return float(value)
    t = value.to(dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def _rand(kind: str, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random numbers drawn on the generator's device (so seeds reproduce), moved to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    if kind == "uniform":
        out = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    elif kind == "normal":
        out = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    else:  # exponential(1)
        u = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
        out = -torch.log1p(-u.clamp(max=1.0 - 1e-7))
    return out.to(like.device)


def project_l1(delta: Tensor, radius: float | Tensor) -> Tensor:
    """Euclidean projection of each example onto the L1 ball of ``radius`` (Duchi et al., ICML 2008)."""
    n = delta.shape[0]
    flat = delta.reshape(n, -1)
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(n)
    abs_flat = flat.abs()
    inside = abs_flat.sum(dim=1) <= r
    if bool(inside.all()):
        return delta
    u, _ = abs_flat.sort(dim=1, descending=True)
    cssv = u.cumsum(dim=1) - r[:, None]
    idx = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = u * idx > cssv
    rho = cond.to(flat.dtype).mul(idx).amax(dim=1).clamp(min=1.0)  # largest index where cond holds
    theta = cssv.gather(1, (rho - 1).long()[:, None]).squeeze(1) / rho
    theta = torch.where(r > 0, theta.clamp(min=0.0), abs_flat.amax(dim=1))
    projected = flat.sign() * (abs_flat - theta[:, None]).clamp(min=0.0)
    out = torch.where(inside[:, None], flat, projected)
    return out.reshape(delta.shape)


def project_l0(delta: Tensor, count: float | Tensor) -> Tensor:
    """Keeps the ``floor(count)`` largest-magnitude coordinates of each example and zeroes the rest (the
    Euclidean projection onto the L0 ball; ties keep the lower index)."""
    n = delta.shape[0]
    flat = delta.reshape(n, -1)
    k = torch.as_tensor(count, dtype=flat.dtype, device=flat.device).expand(n).floor().long()
    nonzero = (flat != 0).sum(dim=1)
    if bool((nonzero <= k).all()):
        return delta
    order = flat.abs().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return torch.where(rank < k[:, None], flat, torch.zeros_like(flat)).reshape(delta.shape)


class LpBall:
    """The L_p ball ``{delta : ||delta||_p <= eps}`` for ``p`` in ``linf``, ``l2``, ``l1``, ``l0``.

    ``eps`` is a float or a per-example ``(N,)`` tensor, in raw input units; for ``l0`` it is the number of
    input features (pixels times channels) that may change, and the ball offers :meth:`project`,
    :meth:`contains` and :meth:`distance` only (no random start or steepest step).

    Example:
        >>> import torch
        >>> ball = LpBall("l2", 1.0)
        >>> round(ball.distance(torch.zeros(1, 3), ball.project(torch.ones(1, 3) * 5)).item(), 6)
        1.0
    """

    def __init__(self, norm: str, eps: float | Tensor) -> None:
        self.norm = check_norm(norm)
        if isinstance(eps, bool) or not isinstance(eps, (numbers.Real, Tensor)):
            raise TypeError(f"eps must be a number or a (N,) tensor, got {type(eps).__name__} {eps!r}")
        if isinstance(eps, Tensor):
            if eps.dtype == torch.bool or eps.is_complex():
                raise TypeError(f"eps must be a real-valued tensor, got dtype {eps.dtype}")
            if eps.ndim > 1:
                raise ValueError(f"eps must be a number or a per-example (N,) tensor, got shape {tuple(eps.shape)}")
            if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
                raise ValueError("eps must be finite and non-negative")
        else:
            eps = float(eps)
            if not math.isfinite(eps) or eps < 0:
                raise ValueError(f"eps must be finite and non-negative, got {eps}")
        self.eps = eps

    def __repr__(self) -> str:
        return f"LpBall(norm={self.norm!r}, eps={self.eps!r})"

    def _batch(self, t: object, what: str, method: str) -> Tensor:
        """``t`` checked to be a batch ``(N, ...)`` matching a per-example ``eps``."""
        batch = _check_batch(t, what, method)
        _check_per_example(self.eps, batch.shape[0], "eps")
        return batch

    def project(self, delta: Tensor) -> Tensor:
        """Nearest point of the ball to each example of ``delta`` (Euclidean projection).

        ``delta``: ``(N, ...)``, one perturbation per row (a single example needs its batch dimension)."""
        self._batch(delta, "delta", "project")
        if self.norm == "linf":
            e = _per_example(self.eps, delta)
            if isinstance(e, float):
                return delta.clamp(-e, e)
            return torch.maximum(torch.minimum(delta, e), -e)
        if self.norm == "l2":
            norms = lp_norm(delta, "l2")
            eps_t = torch.as_tensor(self.eps, dtype=delta.dtype, device=delta.device)
            factor = torch.clamp(eps_t / norms.clamp(min=_TINY), max=1.0)
            return delta * factor.reshape(-1, *([1] * (delta.ndim - 1)))
        if self.norm == "l0":
            return project_l0(delta, self.eps)
        return project_l1(delta, self.eps)

    def contains(self, delta: Tensor, tol: float = 1e-5) -> Tensor:
        """``(N,)`` bool: which examples lie inside the ball (with relative tolerance ``tol``)."""
        self._batch(delta, "delta", "contains")
        eps_t = torch.as_tensor(self.eps, dtype=delta.dtype, device=delta.device)
        return lp_norm(delta, self.norm) <= eps_t * (1 + tol) + tol

    def random_init(self, like: Tensor, generator: torch.Generator | None = None, *, radial: bool = False) -> Tensor:
        """A perturbation drawn uniformly from the ball, shaped like ``like``.

        linf: uniform per coordinate; l2: uniform in the ball (Gaussian direction, radius ``eps * U^(1/d)``);
        l1: uniform in the ball (exponential spacings with random signs).

        ``radial=True`` (l2, l1) draws the radius uniformly from ``[0, eps]`` instead, with the same uniform
        direction. In high dimension a point uniform in the ball lies almost on its surface, so this keeps
        random starts closer to ``x``; linf is unchanged.
        """
        if self.norm == "l0":
            raise ValueError("the l0 ball has no random start; use an attack without one (e.g. jsma)")
        self._batch(like, "like", "random_init")
        n = like.shape[0]
        d = like[0].numel()
        shape = tuple(like.shape)
        view = (-1, *([1] * (like.ndim - 1)))
        e = _per_example(self.eps, like)
        if self.norm == "linf":
            return (2 * _rand("uniform", shape, like, generator) - 1) * e
        if self.norm == "l2":
            direction = _rand("normal", shape, like, generator)
            direction = direction / lp_norm(direction, "l2").clamp(min=_TINY).reshape(view)
            radius = _rand("uniform", (n,), like, generator)
            return direction * (radius if radial else radius.pow(1.0 / d)).reshape(view) * e
        spacings = _rand("exponential", (n, d + 1), like, generator)
        # Uniform in the ball: the first d of d + 1 normalised spacings. On the sphere: normalise d of them.
        point = spacings[:, :d] / (spacings[:, :d] if radial else spacings).sum(dim=1, keepdim=True)
        signs = torch.where(_rand("uniform", (n, d), like, generator) < 0.5, -1.0, 1.0).to(like.dtype)
        if radial:
            point = point * _rand("uniform", (n, 1), like, generator)
        return (point * signs).reshape(shape) * e

    def steepest_step(
        self,
        grad: Tensor,
        step_size: float | Tensor,
        *,
        x: Tensor | None = None,
        bounds: tuple[float, float] | None = None,
        l1_sparsity: float = 0.95,
    ) -> Tensor:
        """The steepest-ascent step of L_p length ``step_size`` for the gradient ``grad``.

        linf: ``step_size * sign(grad)``; l2: ``step_size * grad / ||grad||_2``; l1: the sparse step of
        Tramèr & Boneh (2019): only the coordinates above the ``l1_sparsity`` quantile of ``|grad|`` move, by
        ``step_size / k`` each (L1 length ``step_size``). For l1, passing the current point ``x`` and ``bounds``
        skips coordinates already at a bound that the gradient pushes further out.
        """
        if self.norm == "l0":
            raise ValueError("the l0 ball has no steepest step; use an l0 attack (e.g. jsma)")
        self._batch(grad, "grad", "steepest_step")
        _check_per_example(step_size, grad.shape[0], "step_size")
        if x is not None and tuple(_check_batch(x, "x", "steepest_step").shape) != tuple(grad.shape):
            raise ValueError(f"LpBall.steepest_step: x has shape {tuple(x.shape)} but grad has {tuple(grad.shape)}")
        a = _per_example(step_size, grad)
        if self.norm == "linf":
            return a * grad.sign()
        if self.norm == "l2":
            g_norm = lp_norm(grad, "l2").clamp(min=_TINY).reshape(-1, *([1] * (grad.ndim - 1)))
            return a * grad / g_norm
        if not 0.0 <= l1_sparsity < 1.0:
            raise ValueError(f"l1_sparsity must be in [0, 1), got {l1_sparsity}")
        g = grad
        if x is not None and bounds is not None:
            stuck = ((x <= bounds[0]) & (g < 0)) | ((x >= bounds[1]) & (g > 0))
            g = g.masked_fill(stuck, 0.0)
        n = g.shape[0]
        flat = g.reshape(n, -1)
        k = max(1, round((1.0 - l1_sparsity) * flat.shape[1]))
        top = flat.abs().topk(k, dim=1)
        step = torch.zeros_like(flat)
        step.scatter_(1, top.indices, flat.gather(1, top.indices).sign())
        counts = step.abs().sum(dim=1, keepdim=True).clamp(min=1.0)
        return a * (step / counts).reshape(grad.shape)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """``(N,)`` L_p distance between ``x`` and ``x_adv``."""
        self._batch(x, "x", "distance")
        if tuple(_check_batch(x_adv, "x_adv", "distance").shape) != tuple(x.shape):
            raise ValueError(f"LpBall.distance: x has shape {tuple(x.shape)} but x_adv has {tuple(x_adv.shape)}; "
                             f"both must be (N, ...) batches of the same shape")
        return lp_norm(x_adv - x, self.norm)


def clip_to_bounds(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Clamps ``x`` into ``[bounds[0], bounds[1]]``."""
    return x.clamp(bounds[0], bounds[1])


# ---------------------------------------------------------------- criteria


def is_adversarial(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """``(N,)`` bool: misclassified (``targeted=False``, ``labels`` = true classes) or classified as the
    target (``targeted=True``, ``labels`` = target classes)."""
    pred = logits.argmax(dim=1)
    return pred == labels if targeted else pred != labels


TARGET_MODES = ("least-likely", "random")


def choose_targets(
    mode: str | int,
    labels: Tensor,
    *,
    logits: Tensor | None = None,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Target classes for a targeted attack: the one chooser behind ``illc``, the CLI and evaluations.

    Modes: ``"least-likely"``, the class the model finds least likely on the clean input other than the
    true class (Kurakin et al. 2016's ILLC target; needs the clean ``logits``); ``"random"``, a uniformly
    random class other than the true one (needs ``num_classes`` or ``logits``); an ``int`` (or a string of
    digits), that class for every example. Least-likely and random targets never equal ``labels``; with a
    fixed class, examples whose true class it is keep it as their target, so drop them with
    ``targets != labels``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
        >>> choose_targets("least-likely", torch.tensor([0, 0]), logits=logits).tolist()
        [1, 1]
        >>> choose_targets(2, torch.tensor([0, 2]), num_classes=3).tolist()
        [2, 2]
    """
    k = num_classes if num_classes is not None else (logits.shape[1] if logits is not None else None)
    if isinstance(mode, str) and mode.isdigit():
        mode = int(mode)
    if isinstance(mode, int) and not isinstance(mode, bool):
        if k is not None and not 0 <= mode < k:
            raise ValueError(f"target class {mode} is out of range; use 0..{k - 1}")
        return torch.full_like(labels, mode)
    if mode == "least-likely":
        if logits is None:
            raise ValueError("least-likely targets need the clean logits")
        return logits.scatter(1, labels.to(logits.device).long()[:, None], float("inf")).argmin(dim=1)
    if mode == "random":
        if k is None:
            raise ValueError("random targets need num_classes (or the logits)")
        return random_targets(labels, k, generator)
    raise ValueError(f"{mode!r} is not a target mode; use least-likely, random or a class index")


def random_targets(labels: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random class different from each true label."""
    if num_classes < 2:
        raise ValueError(f"random targets need at least 2 classes, got {num_classes}")
    offset = torch.randint(
        1, num_classes, labels.shape, generator=generator,
        device=generator.device if generator is not None else labels.device,
    ).to(labels.device)
    return (labels + offset) % num_classes
