"""Warnings of the attack engine: results that may mislead, with a category of their own each, so that a
caller can test for them, silence them or turn them into errors (``warnings.simplefilter("error", ...)``);
and :func:`warn_call`, which emits them for one attack call."""

from __future__ import annotations

import warnings
from typing import Protocol


class GradientCounts(Protocol):
    """What :func:`warn_call` reads of an attack's context: inputs whose first loss gradient was checked, and
    how many of those had an exactly zero gradient (both 0 for attacks without gradients)."""

    grad_checked: int
    grad_vanished: int


class RobustnessWarning(UserWarning):
    """An attack's result may overstate the model's robustness: its outputs look like probabilities or
    sigmoid scores rather than logits, or the loss gradient is exactly zero where the attack has to move
    (saturation or gradient masking). Emitted at most once per kind and attack call."""


class AlreadyAtTargetWarning(UserWarning):
    """A targeted run holds examples that the model already assigns to their target before the attack:
    ``AttackResult.already_at_target`` marks them and they do not count as attack successes."""


def warn_call(name: str, n: int, doubts: list[str], ctx: GradientCounts, already: int) -> None:
    """The call's warnings, each at most once: doubts about the logits, vanishing gradients, and targeted
    examples already at their target."""
    for doubt in doubts:
        warnings.warn(f"{name}: {doubt}; the result may overstate robustness", RobustnessWarning, stacklevel=4)
    if ctx.grad_vanished:
        warnings.warn(
            f"{name}: the loss gradient is exactly zero at {ctx.grad_vanished} of {ctx.grad_checked} inputs that "
            f"are not yet adversarial (saturated outputs, e.g. a softmax or sigmoid inside the model, or "
            f"gradient masking); a gradient attack cannot move them and the result may overstate robustness",
            RobustnessWarning, stacklevel=4,
        )
    if already:
        warnings.warn(
            f"{name}: {already} of {n} examples are already classified as their target before the attack; "
            f"they are marked in result.already_at_target and not counted as attack successes",
            AlreadyAtTargetWarning, stacklevel=4,
        )
