"""What :func:`advlab.train.fit` returns: one :class:`EpochRecord` per epoch in a :class:`TrainHistory`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EpochRecord:
    """Metrics of one epoch.

    Attributes:
        epoch: epoch index, from 0.
        loss: mean training loss over the epoch (weighted by batch size).
        train_accuracy: running train accuracy over the epoch (the model changes while it is measured;
            dropout/batch-norm in train mode), or ``None`` when the step returned no logits.
        val_accuracy: accuracy on the validation data at the end of the epoch, or ``None``.
        seconds: wall time of the epoch's training (validation excluded).
        lr: learning rate of the first parameter group in the epoch's last step.
        metrics: epoch means of the extra numbers the step function reported.
    """

    epoch: int
    loss: float
    train_accuracy: float | None
    val_accuracy: float | None
    seconds: float
    lr: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainHistory:
    """What ``fit`` returns: one :class:`EpochRecord` per epoch and the final numbers.

    Attributes:
        epochs: the per-epoch records.
        train_accuracy: running train accuracy of the last epoch (``None`` without logits).
        val_accuracy: validation accuracy after the last epoch, or ``None``.
        seconds: wall time of the whole ``fit`` (validation included).
        steps: optimizer steps taken.
        test_accuracy: not set by ``fit``; callers that evaluate on a test split store it here.
    """

    epochs: list[EpochRecord]
    train_accuracy: float | None
    val_accuracy: float | None
    seconds: float
    steps: int
    test_accuracy: float | None = None

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training seconds per epoch (validation excluded); 0.0 before any epoch."""
        if not self.epochs:
            return 0.0
        return sum(r.seconds for r in self.epochs) / len(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats, ints, lists)."""
        out = asdict(self)
        out["seconds_per_epoch"] = self.seconds_per_epoch
        return out
