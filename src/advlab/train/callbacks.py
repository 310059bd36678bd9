"""Events of the training loop: the ``Callback`` base, the state it sees, and the progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from advlab.train.distributed import is_main_process

if TYPE_CHECKING:
    from advlab.train.loop import EpochRecord
    from advlab.train.steps import StepOutput


@dataclass
class TrainState:
    """The loop's state as callbacks see it (one object, updated in place during ``fit``).

    Attributes:
        model: the model being trained (the model itself, also when ``fit`` steps it through a
            ``DistributedDataParallel`` wrapper).
        optimizer: its optimizer.
        scheduler: the learning-rate scheduler (stepped once per batch), or ``None``.
        epochs: total number of epochs.
        steps_per_epoch: batches per epoch.
        epoch: current epoch, from 0.
        batch: index of the last finished batch within the epoch, from 0.
        step: optimizer steps taken so far.
        metrics: numbers so far; during an epoch ``loss`` (running mean), ``accuracy`` (running train
            accuracy), ``lr`` (used by the last step) and any step metrics; at ``on_epoch_end`` also
            ``seconds`` and, with validation data, ``val_accuracy``. With several processes the running
            numbers are this process's own and those at ``on_epoch_end`` the global ones.
        history: records of the finished epochs.
        output: the last step's :class:`StepOutput` (at ``on_batch_end``), else ``None``.
        stop_training: set it to ``True`` in a callback to end ``fit`` after the current epoch.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    steps_per_epoch: int
    epoch: int = 0
    batch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[EpochRecord] = field(default_factory=list)
    output: StepOutput | None = None
    stop_training: bool = False


class Callback:
    """Base class of training callbacks; override the events you need (each does nothing by default).

    Order of events in ``fit``: ``on_fit_start``, then per epoch ``on_epoch_start``, ``on_batch_end`` after
    every optimizer step, ``on_epoch_end`` (after validation); finally ``on_fit_end``.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, state: TrainState) -> None:
        ...         print(state.epoch, round(state.metrics["loss"], 3))
    """

    def on_fit_start(self, state: TrainState) -> None:
        """Called once before the first epoch."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Called at the start of every epoch."""

    def on_batch_end(self, state: TrainState) -> None:
        """Called after every optimizer step; ``state.output`` holds the step's output."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called at the end of every epoch, after validation; ``state.history[-1]`` is its record."""

    def on_fit_end(self, state: TrainState) -> None:
        """Called once after the last epoch (also when a callback stopped training early)."""


class ProgressBar(Callback):
    """tqdm progress on stderr showing the running loss and train accuracy.

    With several processes (``torchrun``) only process 0 shows it, with its own running numbers during an
    epoch and the global ones at its end; the bars of the other processes stay closed.

    Args:
        per_epoch: one bar per epoch (default, kept on screen), or a single bar for the whole run.
        every: refresh the numbers every this many batches (the bar itself advances every batch).
    """

    def __init__(self, per_epoch: bool = True, every: int = 10) -> None:
        self.per_epoch = per_epoch
        self.every = max(1, int(every))
        self._bar: Any = None

    def _open(self, total: int, desc: str) -> None:
        if not is_main_process():
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_fit_start(self, state: TrainState) -> None:
        if not self.per_epoch:
            self._open(state.epochs * state.steps_per_epoch, "training")

    def on_epoch_start(self, state: TrainState) -> None:
        desc = f"epoch {state.epoch + 1}/{state.epochs}"
        if self.per_epoch:
            self._open(state.steps_per_epoch, desc)
        elif self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def on_batch_end(self, state: TrainState) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if (state.batch + 1) % self.every == 0:
            self._bar.set_postfix(_postfix(state.metrics), refresh=False)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(_postfix(state.metrics), refresh=self.per_epoch)
        if self.per_epoch:
            self._close()

    def on_fit_end(self, state: TrainState) -> None:
        self._close()


# Metrics the bar shows, with their labels (the held-out ones come from advlab.defenses.RobustnessMonitor).
_SHOWN = {"loss": "loss", "accuracy": "accuracy", "val_accuracy": "val_accuracy",
          "held_clean_accuracy": "clean", "held_robust_accuracy": "robust"}


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    return {label: f"{metrics[k]:.4f}" for k, label in _SHOWN.items() if k in metrics}
