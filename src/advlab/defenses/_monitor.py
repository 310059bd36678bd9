"""Clean and robust accuracy on a held-out batch after every epoch, and the check for catastrophic overfitting.

Single-step adversarial training can suddenly overfit to its own attack: accuracy under FGSM stays high while
accuracy under PGD collapses towards zero within an epoch (Wong, Rice & Kolter 2020). :class:`RobustnessMonitor`
measures both on a fixed held-out batch every epoch; with ``check_overfitting`` it flags the collapse, warns,
and can stop and restore the weights of the most robust epoch.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks import RobustnessWarning, fgsm, pgd
from advlab.train.callbacks import Callback, TrainState


class CatastrophicOverfittingWarning(RobustnessWarning):
    """Single-step adversarial training overfitted: PGD accuracy on the held-out batch collapsed."""


@dataclass(frozen=True)
class MonitorConfig:
    """The held-out check of every epoch.

    Two signatures are flagged:

    - *collapse*: PGD accuracy falls more than ``drop`` (absolute) below its best epoch (Wong et al.'s early
      stopping rule); with ``restore_best`` training stops and the best epoch's weights come back;
    - *masking*: FGSM accuracy at least ``min_fgsm`` while PGD accuracy is at most ``max_pgd``: the model
      defeats its single-step attack only (plain FGSM training shows it from the first epoch, before any epoch
      was robust to restore). Single-step training with a random start passes through it in its first epochs
      and recovers, so an epoch showing it is recorded (event ``masking``) and the verdict waits for the end:
      the returned model still showing it is catastrophic overfitting.

    Attributes:
        steps: iterations of the fixed PGD (step ``2.5 * eps / steps``, one random start from a fixed seed).
        drop: the collapse threshold.
        min_fgsm: the masking signature's FGSM accuracy (a model not yet robust to FGSM is not overfitting).
        max_pgd: the masking signature's PGD accuracy (near zero).
    """

    steps: int = 10
    drop: float = 0.2
    min_fgsm: float = 0.5
    max_pgd: float = 0.05


class RobustnessMonitor(Callback):
    """After every epoch: clean, FGSM and PGD accuracy of the model on a fixed held-out batch.

    The numbers go into the epoch's metrics (``held_clean_accuracy``, ``held_fgsm_accuracy``,
    ``held_robust_accuracy``; the progress bar shows them) and :attr:`epochs`. With ``check_overfitting`` an
    epoch showing catastrophic overfitting (see :class:`MonitorConfig`) is flagged in :attr:`events` with a
    :class:`CatastrophicOverfittingWarning`; with ``restore_best``, on a collapse, training stops and the
    weights of the epoch with the highest PGD accuracy are restored.

    Args:
        x, y: the held-out batch (not trained on).
        eps, norm: the budget of the check.
        config: the check's settings.
        check_overfitting: flag catastrophic overfitting.
        restore_best: on a collapse, stop and restore the most robust epoch's weights.
        seed: seed of the PGD's random start (the same every epoch: a fixed attack).
    """

    def __init__(
        self, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", config: MonitorConfig | None = None,
        check_overfitting: bool = False, restore_best: bool = False, seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        self.eps, self.norm = eps, norm
        self.config = config or MonitorConfig()
        self.check_overfitting = check_overfitting
        self.restore_best = restore_best
        self.seed = seed
        self.epochs: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.restored_epoch: int | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._last_masked = False

    def measure(self, model: nn.Module) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy of ``model`` on the held-out batch."""
        module = getattr(model, "module", model)
        dev = next((p.device for p in module.parameters()), self.x.device)
        x, y = self.x.to(dev), self.y.to(dev)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RobustnessWarning)
            strong = pgd(module, x, y, eps=self.eps, norm=self.norm, steps=self.config.steps, generator=gen)
            weak = fgsm(module, x, y, eps=self.eps) if self.norm == "linf" else None
        clean = float(strong.clean_correct.float().mean())
        robust = float((strong.clean_correct & ~strong.success[0]).float().mean())
        single = robust if weak is None else float((weak.clean_correct & ~weak.success[0]).float().mean())
        return {"held_clean_accuracy": clean, "held_fgsm_accuracy": single, "held_robust_accuracy": robust}

    def on_epoch_end(self, state: TrainState) -> None:
        numbers = self.measure(state.model)
        state.metrics.update(numbers)
        if state.history:
            state.history[-1].metrics.update(numbers)
        self.epochs.append({"epoch": state.epoch, **numbers})
        robust = numbers["held_robust_accuracy"]
        best = max((e["held_robust_accuracy"] for e in self.epochs[:-1]), default=None)
        if best is None or robust > best:
            self.best_epoch = state.epoch
            if self.restore_best:
                module = getattr(state.model, "module", state.model)
                self._best_state = copy.deepcopy(module.state_dict())
        if not self.check_overfitting:
            return
        cfg = self.config
        collapsed = best is not None and best - robust > cfg.drop
        masked = numbers["held_fgsm_accuracy"] >= cfg.min_fgsm and robust <= cfg.max_pgd
        self._last_masked = masked and not collapsed
        if masked and not collapsed:
            # Recorded, not yet a verdict: single-step training often passes through it in its first epochs
            # and recovers; the model that training returns is judged at the end (on_fit_end).
            self.events.append({"epoch": state.epoch, "event": "masking", "signature": "masking",
                                "reason": self._masking_reason(numbers)})
        if not collapsed:
            return
        reason = f"PGD accuracy fell from {best:.3f} to {robust:.3f}"
        restore = self.restore_best and self._best_state is not None and self.best_epoch is not None
        self.events.append({"epoch": state.epoch, "event": "catastrophic_overfitting", "signature": "collapse",
                            "reason": reason})
        self._warn(state.epoch, reason, restore)
        if restore and self._best_state is not None:
            module = getattr(state.model, "module", state.model)
            module.load_state_dict(self._best_state)
            self.restored_epoch = self.best_epoch
            state.stop_training = True

    def on_fit_end(self, state: TrainState) -> None:
        """The returned model still shows the masking signature: catastrophic overfitting, flagged now."""
        if not (self.check_overfitting and self._last_masked and self.restored_epoch is None and self.epochs):
            return
        last = self.epochs[-1]
        reason = self._masking_reason(last)
        self.events.append({"epoch": int(last["epoch"]), "event": "catastrophic_overfitting",
                            "signature": "masking", "reason": reason})
        self._warn(int(last["epoch"]), reason, False)

    @staticmethod
    def _masking_reason(numbers: dict[str, float]) -> str:
        return (f"FGSM accuracy {numbers['held_fgsm_accuracy']:.3f} but PGD accuracy "
                f"{numbers['held_robust_accuracy']:.3f}")

    @staticmethod
    def _warn(epoch: int, reason: str, restore: bool) -> None:
        warnings.warn(
            f"catastrophic overfitting at epoch {epoch + 1}: {reason} on the held-out batch; the model defeats "
            f"its single-step attack only. Try a random start (fast-at), a smaller step size, fewer epochs or "
            f"pgd-at" + ("; restoring the most robust epoch" if restore else ""),
            CatastrophicOverfittingWarning, stacklevel=3,
        )

    @property
    def overfitted(self) -> bool:
        """Whether catastrophic overfitting was flagged (a collapse, or a returned model that shows masking;
        ``masking`` events of epochs the training recovered from do not count)."""
        return any(e["event"] == "catastrophic_overfitting" for e in self.events)

    def report(self) -> dict[str, Any]:
        """JSON-ready: the per-epoch numbers, the flags, the best and the restored epoch."""
        return {
            "eps": self.eps, "norm": self.norm, "held_out": int(self.x.shape[0]), "steps": self.config.steps,
            "epochs": self.epochs, "events": self.events, "catastrophic_overfitting": self.overfitted,
            "best_epoch": self.best_epoch, "restored_epoch": self.restored_epoch,
        }
