"""The model's state during an attack and the hooks around it: evaluation mode with frozen parameters
(:func:`attack_mode`), a progress callback (:func:`progress`), and why a model may have failed on the inputs
(its dtype or device)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor, nn

from advlab.models.classifier import unchecked_inputs

# Called after each chunk with (examples done, examples in the call), while :func:`progress` is active.
_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("advlab_attack_progress", default=None)


@contextmanager
def progress(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Within this context every attack calls ``callback(done, total)`` after each chunk it finishes (for a
    progress bar); the callback sees counts only and cannot change a result."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_callback() -> Callable[[int, int], None] | None:
    """The callback of the innermost active :func:`progress`, if any."""
    return _PROGRESS.get()


@contextmanager
def attack_mode(model: nn.Module | Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Evaluation mode, frozen parameters and no per-call input checks for the duration of an attack;
    every submodule's mode and every parameter's ``requires_grad`` are restored after, even on error."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with unchecked_inputs(model):
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def mismatch_hint(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> str | None:
    """Why a model may have failed on ``x``: its parameters' dtype or device differ from the inputs'."""
    if not isinstance(model, nn.Module):
        return None
    params = [p for p in model.parameters() if p.is_floating_point()]
    dtypes = {p.dtype for p in params}
    devices = {p.device for p in params}
    if len(dtypes) == 1 and x.dtype not in dtypes:
        (dtype,) = dtypes
        return (f"x has dtype {x.dtype} but the model's parameters are {dtype}; convert one to match "
                f"(x.to({dtype}) or model.to({x.dtype}))")
    if len(devices) == 1 and x.device not in devices:
        (device,) = devices
        return f"x is on {x.device} but the model is on {device}; move one to the other (x.to('{device}'))"
    return None
