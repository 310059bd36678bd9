"""A detector of adversarial inputs attached to an inner layer of a frozen classifier: the model.

Reference: Metzen, Genewein, Fischer & Bischoff, "On Detecting Adversarial Perturbations", ICLR 2017. A small
subnetwork reads the activation of one layer of the classifier and outputs one logit, positive for
"adversarial". Training is :func:`~advlab.defenses.train_detector` (:mod:`advlab.defenses._detector_train`);
evaluation and the adaptive attack that evades it (Carlini & Wagner 2017) are in
:mod:`advlab.defenses._detector_attack`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_choice, check_float, check_int, check_optional
from advlab.attacks import attack_spec, list_attacks
from advlab.attacks._validation import model_bounds
from advlab.models.classifier import Classifier

__all__ = ["Detector", "DetectorConfig", "default_layer"]


# Modules without parameters that may follow the first weighted layer inside the default detection layer.
_FOLLOWERS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


@dataclass(frozen=True)
class DetectorConfig:
    """Options of the detector (registered as the ``detector`` defense).

    Attributes:
        attacks: registered attacks whose examples it learns to flag (default FGSM and PGD).
        norm: the threat model's norm; every attack must support it.
        layer: index into the classifier's ``nn.Sequential`` whose output the detector reads;
            ``None``: :func:`default_layer`.
        width: channels (4-D activations) or hidden units (flat ones) of the detector.
        epochs: passes over the training inputs. batch_size: clean inputs per step (as many adversarial
            ones join them). lr: Adam's learning rate.
        steps: iterations of every attack that has a ``steps`` option (PGD, BIM, MI-FGSM, ...): fewer than
            the attacks' defaults, as each batch of every epoch crafts afresh.
    """

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    norm: str = "linf"
    layer: int | None = None
    width: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    steps: int = 10

    def __post_init__(self) -> None:
        names = (self.attacks,) if isinstance(self.attacks, str) else self.attacks
        if not isinstance(names, Sequence) or not names:
            raise TypeError(f"attacks must be a non-empty sequence of attack names, got {self.attacks!r}")
        check_choice("norm", self.norm, ("linf", "l2", "l1"))
        for name in names:
            check_choice("attack", name, list_attacks())
            if self.norm not in attack_spec(name).norms:
                able = [a for a in list_attacks() if self.norm in attack_spec(a).norms]
                raise ValueError(f"attack {name!r} does not support norm {self.norm!r}; attacks that do: "
                                 f"{', '.join(able)}")
        object.__setattr__(self, "attacks", tuple(names))
        check_optional("layer", self.layer, check_int, minimum=0)
        check_int("width", self.width)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("lr", self.lr, inclusive=False)
        check_int("steps", self.steps)


def layers(classifier: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` of the classifier (``Classifier.net``, or the classifier itself)."""
    net = classifier.net if isinstance(classifier, Classifier) else classifier
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"the detector indexes the layers of an nn.Sequential, but the classifier's net is a "
                        f"{type(net).__name__}; wrap its layers in an nn.Sequential")
    return net


def default_layer(classifier: nn.Module) -> int:
    """The default detection layer: the output of the first weighted layer (convolution, linear, RBF, ...)
    together with the activations and pooling right after it. For ``cnn-small`` that is index 2, the first
    conv block after its max pooling (Metzen et al. found early layers the easiest to detect from).

    Example:
        >>> import advlab
        >>> default_layer(advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10))
        2
    """
    net = layers(classifier)
    first = next((i for i, m in enumerate(net) if any(True for _ in m.parameters())), None)
    if first is None:
        raise ValueError("the classifier has no layer with parameters to attach a detector behind; pass layer=")
    end = first
    while end + 1 < len(net) - 1 and isinstance(net[end + 1], _FOLLOWERS):
        end += 1
    return end


class Detector(nn.Module):
    """A classifier (kept frozen and in evaluation mode) with a detection head on one of its layers.

    ``forward(x)`` gives ``(N,)`` detection logits, positive for "adversarial"; ``outputs(x)`` gives the
    classifier's logits and the detection logits from one pass. ``threshold`` (default 0, probability 0.5)
    is what :meth:`detect` compares with; :meth:`calibrate` sets it for a false-positive rate on clean data.
    ``record`` says what it was trained on (attacks, budget, norm, layer, options, epochs, final loss).

    Build one with :func:`train_detector`.
    """

    feat_mean: Tensor
    feat_std: Tensor

    def __init__(self, classifier: nn.Module, layer: int, head: nn.Module, feat_mean: Tensor, feat_std: Tensor,
                 record: dict[str, Any] | None = None) -> None:
        super().__init__()
        net = layers(classifier)
        check_int("layer", layer, minimum=0, maximum=len(net) - 1)
        self.classifier = classifier.eval()
        self.layer = layer
        self.head = head
        self.register_buffer("feat_mean", feat_mean)
        self.register_buffer("feat_std", feat_std)
        self.threshold = 0.0
        self.record: dict[str, Any] = dict(record or {})

    @property
    def bounds(self) -> tuple[float, float]:
        """The classifier's input bounds."""
        return model_bounds(self.classifier)

    def train(self, mode: bool = True) -> Detector:
        """Sets the head's mode; the classifier stays in evaluation mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def _prefix(self, x: Tensor) -> tuple[Tensor, nn.Sequential]:
        clf, net = self.classifier, layers(self.classifier)
        if isinstance(clf, Classifier):
            if clf.check_inputs:
                clf.validate(x)
            if clf.mean is not None and clf.std is not None:
                x = (x - clf.mean) / clf.std
        for module in list(net)[: self.layer + 1]:
            x = module(x)
        return x, net

    def activation(self, x: Tensor) -> Tensor:
        """The classifier's activation at :attr:`layer` for raw inputs ``x``."""
        return self._prefix(x)[0]

    def score(self, activation: Tensor) -> Tensor:
        """Detection logits ``(N,)`` of an activation (standardised with the clean training statistics)."""
        out: Tensor = self.head((activation - self.feat_mean) / self.feat_std)
        return out.squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.activation(x))

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(class logits (N, K), detection logits (N,))`` from one pass through the classifier."""
        act, net = self._prefix(x)
        logits = act
        for module in list(net)[self.layer + 1 :]:
            logits = module(logits)
        return logits, self.score(act)

    def scores(self, x: Tensor, batch_size: int | None = None) -> Tensor:
        """Detection logits of ``x`` in evaluation mode without gradients, in chunks of ``batch_size``."""
        check_batch(x, self.bounds)
        check_optional("batch_size", batch_size, check_int)
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                chunk = batch_size or len(x)
                return torch.cat([self(x[i : i + chunk]) for i in range(0, len(x), chunk)])
        finally:
            self.train(was)

    def threshold_at(self, x_clean: Tensor, fpr: float = 0.05, batch_size: int | None = None) -> float:
        """The lowest threshold that flags at most a fraction ``fpr`` of the clean inputs ``x_clean``
        (an example is flagged when its detection logit exceeds the threshold).

        Example:
            >>> import torch, advlab
            >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10).eval()
            >>> from advlab.defenses import train_detector
            >>> det = train_detector(clf, torch.rand(8, 1, 8, 8), torch.arange(8), eps=0.1, attacks=["fgsm"],
            ...                      epochs=1)
            >>> t = det.threshold_at(torch.rand(40, 1, 8, 8), fpr=0.1)
            >>> isinstance(t, float)
            True
        """
        fpr = check_float("fpr", fpr, maximum=1.0)
        s = self.scores(x_clean, batch_size).sort(descending=True).values
        k = math.floor(fpr * len(s) + 1e-9)  # at most k clean scores may exceed the threshold
        return float(s[k]) if k < len(s) else float(s[-1]) - 1.0

    def calibrate(self, x_clean: Tensor, fpr: float = 0.05, batch_size: int | None = None) -> float:
        """Sets and returns :attr:`threshold` from :meth:`threshold_at`; recorded in :attr:`record`."""
        self.threshold = self.threshold_at(x_clean, fpr, batch_size)
        self.record["calibration"] = {"fpr": fpr, "n_clean": len(x_clean), "threshold": self.threshold}
        return self.threshold

    def detect(self, x: Tensor, threshold: float | None = None, batch_size: int | None = None) -> Tensor:
        """``(N,)`` bool: flagged as adversarial (detection logit above ``threshold``, default :attr:`threshold`)."""
        t = self.threshold if threshold is None else check_float("threshold", threshold, minimum=None)
        return self.scores(x, batch_size) > t


def head_for(shape: torch.Size, width: int) -> nn.Module:
    """Two 3x3 convolutions, global average pooling and a linear output for ``(C, H, W)`` activations; a
    two-hidden-layer ReLU MLP for flat ones."""
    if len(shape) == 3:
        return nn.Sequential(nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
