"""Model wrappers for defenses built from input transformations, and for the adaptive attacks that break them.

Input transformations (:class:`Quantize`, :class:`JPEGLike`, :class:`GaussianNoise`) map raw inputs within
bounds to raw inputs within the same bounds; :class:`Defended` puts one in front of a classifier. Two wrappers
turn such a defended model into one that any gradient attack of :mod:`advlab.attacks` can attack properly
(Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018):

- :class:`BPDA` (Backward Pass Differentiable Approximation): the forward pass of a non-differentiable
  transform, the gradient of a differentiable approximation of it (the identity by default);
- :class:`EOT` (Expectation over Transformation): the mean logits of several draws of a randomised model,
  so that the attack follows the expected gradient rather than the gradient of one draw.

:class:`LogitEnsemble` averages the logits of several models; :class:`RandomDropout` is dropout that stays
on in evaluation mode (test-time randomisation).

The transformations live in :mod:`advlab.defenses._transforms`; import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from advlab._validate import check_int, check_optional
from advlab.defenses._transforms import (
    GaussianNoise,
    JPEGLike,
    Quantize,
    RandomDropout,
    dct_matrix,
    jpeg_table,
    model_bounds_of,
)

__all__ = [
    "BPDA",
    "EOT",
    "Defended",
    "GaussianNoise",
    "JPEGLike",
    "LogitEnsemble",
    "Quantize",
    "RandomDropout",
    "bpda",
    "dct_matrix",
    "jpeg_table",
    "model_bounds_of",
]


class Defended(nn.Module):
    """``classifier(transform(x))``: an input transformation in front of a classifier.

    Args:
        transform: maps raw inputs within bounds to raw inputs within the same bounds; a ``bounds``
            attribute, when it has one, must equal the classifier's.
        classifier: returns logits; its ``bounds`` (default ``(0.0, 1.0)``) become this model's ``bounds``,
            which the attacks read.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> model = Defended(Quantize(4), clf)
        >>> model.bounds, model(torch.rand(2, 1, 2, 2)).shape
        ((0.0, 1.0), torch.Size([2, 3]))
    """

    def __init__(self, transform: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        for what, module in (("transform", transform), ("classifier", classifier)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{what} must be a torch.nn.Module, got {type(module).__name__}")
        self.bounds = model_bounds_of(classifier)
        own = getattr(transform, "bounds", None)
        if own is not None and model_bounds_of(transform) != self.bounds:
            raise ValueError(f"the transform's bounds {tuple(own)} differ from the classifier's {self.bounds}; "
                             f"build the transform with bounds={self.bounds}")
        self.transform = transform
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.transform(x))
        return out


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018): the forward pass of
    ``transform``, the gradient of ``approx`` (straight-through, the identity, by default).

    Computes ``a + (transform(x) - a).detach()`` with ``a = approx(x)``: the value is ``transform(x)`` and
    the gradient with respect to ``x`` is that of ``approx``.

    Args:
        transform: the (non-differentiable) transformation.
        approx: a differentiable function approximating it, or ``None`` for the identity.

    Example:
        >>> x = torch.tensor([[0.2, 0.7]], requires_grad=True)
        >>> out = BPDA(Quantize(2))(x)
        >>> out.detach(), torch.autograd.grad(out.sum(), x)[0]
        (tensor([[0., 1.]]), tensor([[1., 1.]]))
    """

    def __init__(self, transform: nn.Module, approx: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if not isinstance(transform, nn.Module):
            raise TypeError(f"transform must be a torch.nn.Module, got {type(transform).__name__}")
        if approx is not None and not callable(approx):
            raise TypeError(f"approx must be a function of the input or None, got {type(approx).__name__}")
        self.transform = transform
        self.approx = approx
        if hasattr(transform, "bounds"):
            self.bounds = model_bounds_of(transform)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.transform(x)
        smooth = x if self.approx is None else self.approx(x)
        return smooth + (out - smooth).detach()


def bpda(defended: Defended, approx: Callable[[Tensor], Tensor] | None = None) -> Defended:
    """The defended model with its transform wrapped in :class:`BPDA` (same modules, shared, not copied).

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> model = bpda(Defended(Quantize(2), clf))
        >>> x = torch.rand(1, 1, 2, 2, requires_grad=True)
        >>> bool(torch.autograd.grad(model(x)[0, 0], x)[0].abs().sum() > 0)
        True
    """
    if not isinstance(defended, Defended):
        raise TypeError(f"bpda takes a Defended model, got {type(defended).__name__}; "
                        f"wrap the transform itself with BPDA(transform)")
    return Defended(BPDA(defended.transform, approx), defended.classifier)


class EOT(nn.Module):
    """Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok 2018): the mean logits of
    ``samples`` calls of a randomised model, each drawing its own randomness.

    The batch is replicated ``chunk`` times per forward pass (``x.repeat``) and the logits averaged, so an
    attack differentiates through the mean. ``bounds`` are the wrapped model's.

    Args:
        model: returns logits ``(N, K)``; randomised (noise, test-time dropout) or not.
        samples: draws averaged, >= 1.
        chunk: draws per forward pass (default all ``samples`` at once); lower it to bound memory.

    Example:
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 1, 2, 2)
        >>> bool(torch.allclose(EOT(clf, samples=4)(x), clf(x), atol=1e-6))
        True
    """

    def __init__(self, model: nn.Module, samples: int, chunk: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.samples = check_int("samples", samples)
        self.chunk = check_optional("chunk", chunk, check_int) or self.samples
        self.model = model
        self.bounds = model_bounds_of(model)

    def forward(self, x: Tensor) -> Tensor:
        n, total = x.shape[0], None
        for start in range(0, self.samples, self.chunk):
            k = min(self.chunk, self.samples - start)
            logits = self.model(x.repeat(k, *([1] * (x.ndim - 1))))
            part = logits.reshape(k, n, *logits.shape[1:]).sum(dim=0)
            total = part if total is None else total + part
        assert total is not None
        return total / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}, chunk={self.chunk}"


class LogitEnsemble(nn.Module):
    """The mean of the members' logits (one ``bounds``, shared by every member).

    Example:
        >>> members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(2)]
        >>> x = torch.rand(2, 1, 2, 2)
        >>> bool(torch.allclose(LogitEnsemble(members)(x), (members[0](x) + members[1](x)) / 2))
        True
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(models)
        if not members:
            raise ValueError("LogitEnsemble needs at least one model")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{i}] must be a torch.nn.Module, got {type(m).__name__}")
        bounds = {model_bounds_of(m) for m in members}
        if len(bounds) > 1:
            raise ValueError(f"the members' bounds differ ({sorted(bounds)}); ensemble models of one input space")
        self.members = nn.ModuleList(members)
        self.bounds = bounds.pop()

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)
