"""The context handed to attack kernels: the model, its bounds, counted evaluations and the call's per-example
randomness (drawn by :mod:`advlab.attacks._random`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from advlab.attacks._random import PerExampleRandomness
from advlab.attacks._validation import check_logits
from advlab.threat import clip_to_bounds, is_adversarial


class AttackContext(PerExampleRandomness):
    """Handed to kernels: the model, bounds, RNG (per example, see :class:`PerExampleRandomness`) and counted
    forward/gradient helpers.

    Kernels evaluate the model only through :meth:`logits`, :meth:`forward`, :meth:`value_and_grad` and
    differentiate only through :meth:`grad`, so that cost accounting stays honest. Every evaluation is
    watched for the current chunk's clean input: the first one made there supplies the clean logits
    (validated on the spot), so an attack whose first step is taken at the clean input costs no separate
    clean forward pass.
    """

    def __init__(
        self, model: nn.Module | Callable[[Tensor], Tensor], bounds: tuple[float, float],
        generator: torch.Generator | None, targeted: bool,
    ) -> None:
        super().__init__(generator)
        self.model = model
        self.bounds = bounds
        self.targeted = targeted
        self.n_forward = 0
        self.n_backward = 0
        # The current chunk's labels (targets when targeted), set by the engine once known.
        self.labels: Tensor | None = None
        # Inputs the loss gradient was checked at (the first gradient of each chunk), and how many of them
        # had an exactly zero gradient although they were not adversarial (see run_attack's warning).
        self.grad_checked = 0
        self.grad_vanished = 0
        self._grad_pending = False
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
            if self._clean_x is None:
                raise RuntimeError("num_classes is known once a chunk has begun")
            self.logits(self._clean_x[:1])
        assert self._num_classes is not None
        return self._num_classes

    def begin_chunk(
        self, x: Tensor, check: Callable[[Tensor], None], true_labels: Tensor | None, rows: slice | None = None
    ) -> None:
        """Starts a chunk with clean input ``x`` (rows ``rows`` of the call's batch); ``check(logits)``
        validates its clean logits once seen."""
        self._clean_x, self._clean_logits, self._check_clean = x, None, check
        self.true_labels = true_labels
        self.labels = None
        self.memo = {}
        self._grad_pending = True
        self._begin_random_chunk(x, rows if rows is not None else slice(0, x.shape[0]))

    def clean_logits(self) -> Tensor:
        """The current chunk's clean logits: those seen during the kernel, else one forward pass now."""
        if self._clean_logits is None:
            if self._clean_x is None:
                raise RuntimeError("clean_logits is known once a chunk has begun")
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
        """Forward pass with gradient tracking (counted as a forward). Differentiate its output with
        :meth:`grad`, for kernels that need several gradients of one forward pass."""
        with torch.enable_grad():
            out = self.model(x)
        self.n_forward += x.shape[0]
        self._observe(x.detach(), out)
        return out

    def grad(self, output: Tensor, inputs: Tensor, *, retain_graph: bool = False) -> Tensor:
        """``d sum(output) / d inputs`` through ``torch.autograd.grad`` (parameter ``.grad`` untouched),
        counted as one backward pass per row of ``inputs``. The gradient is made contiguous: a model whose
        output depends on the input only through a reduction (``x.sum()``) gets an expanded (stride-0)
        gradient, which the steps' in-place updates cannot write to."""
        (g,) = torch.autograd.grad(output.sum(), inputs, retain_graph=retain_graph)
        self.n_backward += inputs.shape[0]
        return g.contiguous()

    def value_and_grad(
        self, x: Tensor, objective: Callable[[Tensor], Tensor], memo_key: str | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(objective(logits) (N,), d sum(objective) / dx, logits)``, counting one forward and one
        backward per example.

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
            grad = self.grad(value, xg)
        out = (value.detach(), grad, logits.detach())
        if self._grad_pending:
            self._check_gradient(grad, out[2])
        if key is not None:
            self.memo[key] = (out[0], out[1].clone(), out[2])
        return out

    def _check_gradient(self, grad: Tensor, logits: Tensor) -> None:
        """Counts, at the chunk's first loss gradient, the inputs not yet adversarial whose gradient is exactly
        zero: saturated outputs (a softmax or sigmoid inside the model) or gradient masking, where a gradient
        attack cannot move and robustness would be overstated."""
        labels, rows = self.labels, grad.shape[0]
        if labels is None or labels.shape[0] == 0 or rows % labels.shape[0]:
            return  # not the chunk's (replicated) batch: nothing to compare with
        self._grad_pending = False
        labels = labels.repeat(rows // labels.shape[0])
        open_ = ~is_adversarial(logits, labels, self.targeted)
        zero = grad.reshape(rows, -1).abs().amax(dim=1) == 0
        self.grad_checked += int(open_.sum())
        self.grad_vanished += int((open_ & zero).sum())

    def clip(self, x: Tensor) -> Tensor:
        """Clamps into the model's bounds."""
        return clip_to_bounds(x, self.bounds)


class Kernel(Protocol):
    """An attack's kernel: ``kernel(ctx, x, y, eps) -> x_adv`` for one chunk and one budget (or, for a
    minimum-norm attack, once with the largest budget)."""

    def __call__(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor: ...


def replicate(x: Tensor, times: int) -> Tensor:
    """``times`` copies of the batch ``x`` stacked along the batch dimension (restart-major)."""
    return x.repeat(times, *([1] * (x.ndim - 1))) if times > 1 else x


def per_example_view(x: Tensor | Sequence[int]) -> tuple[int, ...]:
    """The view shape ``(-1, 1, 1, ...)`` that broadcasts a ``(N,)`` tensor over a batch shaped like ``x``."""
    ndim = x.ndim if isinstance(x, Tensor) else len(x)
    return (-1, *([1] * (ndim - 1)))
