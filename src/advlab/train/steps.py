"""Step functions: what one training step computes, separate from the loop that applies it.

The loop in :func:`advlab.train.fit` owns ``zero_grad``, ``backward``, clipping, ``optimizer.step`` and the
schedule; a step function only turns a batch into a loss. Adversarial training therefore swaps the step
function and nothing else: its step crafts adversarial inputs and returns the loss on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class StepContext:
    """What a step function may need beyond ``(model, x, y)``.

    Attributes:
        epoch: current epoch, counted from 0.
        epochs: total number of epochs of this ``fit``.
        batch: index of the batch within the epoch, from 0.
        step: global step (number of optimizer steps taken before this one).
        steps_per_epoch: batches per epoch.
        generator: a ``torch.Generator`` on the training device, seeded from ``fit``'s ``seed``; use it for
            any randomness of the step (random starts of an attack, noise), never the global RNG.
        device: the training device.
        optimizer: the optimizer of this ``fit`` (the loop steps it, unless the step applies its own updates:
            see :attr:`StepOutput.applied`).
        module: the model itself when ``model`` is a wrapper that synchronises gradients across processes
            (``DistributedDataParallel``), else ``model``: craft adversarial inputs with it, so that gradients
            taken only with respect to the inputs start no synchronisation.
    """

    epoch: int
    epochs: int
    batch: int
    step: int
    steps_per_epoch: int
    generator: torch.Generator
    device: torch.device
    optimizer: torch.optim.Optimizer
    module: nn.Module | None = None


@dataclass
class StepOutput:
    """What a step function returns.

    Attributes:
        loss: scalar tensor to minimise; the loop calls ``loss.backward()``.
        logits: ``(N, K)`` logits whose argmax is compared with the batch labels for the running train
            accuracy, or ``None`` to leave this batch out of the accuracy.
        metrics: extra per-batch numbers (e.g. ``{"adv_accuracy": 0.4}``); the loop averages each one
            over the epoch, weighted by batch size, and records it in the epoch's metrics.
        applied: the step has already applied its own optimizer updates (free adversarial training replays
            each batch and updates the weights on every replay); the loop then neither back-propagates
            ``loss`` nor steps the optimizer (nor clips gradients), but still steps the schedule once and
            records ``loss`` and ``logits``.
    """

    loss: Tensor
    logits: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    applied: bool = False


StepFn = Callable[[nn.Module, Tensor, Tensor, StepContext], StepOutput]
"""Signature of a step function: ``step(model, x, y, ctx) -> StepOutput``.

``x`` ``(N, C, H, W)`` and ``y`` ``(N,)`` are already on ``ctx.device`` and the model is in train mode.
A step function with the attribute ``accepts_unlabelled = True`` (semi-supervised training) may receive
labels ``-1`` for unlabelled examples; the loop leaves those out of the train accuracy.
"""


def standard_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
    """Plain empirical-risk minimisation: cross-entropy of the model's logits on the clean batch.

    Args:
        model: returns logits ``(N, K)`` for ``x``.
        x: inputs ``(N, C, H, W)``.
        y: labels ``(N,)``, int64 in ``[0, K)``.
        ctx: the step context (unused here).

    Returns:
        ``StepOutput(loss, logits)`` with the mean cross-entropy.

    Example:
        >>> import torch
        >>> from advlab.train import fit, standard_step
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(32, 1, 2, 2), torch.randint(0, 2, (32,))
        >>> history = fit(net, x, y, epochs=1, step=standard_step)
    """
    logits = model(x)
    return StepOutput(loss=F.cross_entropy(logits, y), logits=logits)
