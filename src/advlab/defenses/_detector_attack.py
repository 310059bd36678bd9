"""Evaluating a detector of adversarial inputs: its ROC, the adaptive attack on classifier and detector
together, and how often an attack evades both.

Reference: Carlini & Wagner, "Adversarial Examples Are Not Easily Detected: Bypassing Ten Detection
Methods", AISec 2017. Their construction joins classifier and detector into one model with an extra class
"detected": an input the joint model assigns to a wrong class ``t`` is misclassified *and* passes the
detector, so any targeted gradient attack on the joint model attacks both at once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_choice, check_float, check_int, check_labels, check_optional
from advlab.attacks import AlreadyAtTargetWarning, AttackResult, attack_spec, get_attack, list_attacks, pgd
from advlab.defenses._detector import Detector

__all__ = ["EvasionModel", "adaptive_attack", "detection_roc", "detector_evasion", "evasion_rate"]


class EvasionModel(nn.Module):
    """Classifier and detector as one model with ``K + 1`` logits (Carlini & Wagner 2017).

    The first ``K`` logits are the classifier's ``z``; the last, "detected", is
    ``max_j z_j + scale * (d(x) - threshold)`` with ``d`` the detection logit. So the last class wins exactly
    when the detector flags the input (``d(x) > threshold``), and an input the model assigns to a class
    ``t < K`` with ``t`` not its true class is misclassified and undetected: the goal of a targeted attack on
    this model. Its ``bounds`` are the classifier's.

    Args:
        detector: a trained :class:`Detector`.
        threshold: the detection threshold; default ``detector.threshold``.
        scale: weight of the detection logit against the class logits (> 0, default 1).

    Example:
        >>> import torch, advlab
        >>> from advlab.defenses import train_detector
        >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10).eval()
        >>> det = train_detector(clf, torch.rand(8, 1, 8, 8), torch.arange(8), eps=0.1, attacks=["fgsm"], epochs=1)
        >>> EvasionModel(det)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 11])
    """

    def __init__(self, detector: Detector, threshold: float | None = None, scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be an advlab Detector (train_detector), got {type(detector).__name__}")
        self.detector = detector
        self.threshold = detector.threshold if threshold is None else check_float("threshold", threshold, minimum=None)
        self.scale = check_float("scale", scale, inclusive=False)

    @property
    def bounds(self) -> tuple[float, float]:
        """The classifier's input bounds."""
        return self.detector.bounds

    def forward(self, x: Tensor) -> Tensor:
        logits, d = self.detector.outputs(x)
        detected = logits.amax(dim=1) + self.scale * (d - self.threshold)
        return torch.cat([logits, detected[:, None]], dim=1)


def _runner_up(logits: Tensor, y: Tensor) -> Tensor:
    """The most likely class other than ``y``, per example."""
    return logits.scatter(1, y[:, None], float("-inf")).argmax(dim=1)


def adaptive_attack(
    detector: Detector,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    attack: str = "pgd",
    norm: str = "linf",
    threshold: float | None = None,
    scale: float = 1.0,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    **options: Any,
) -> AttackResult:
    """Attacks classifier and detector together: a targeted attack on their :class:`EvasionModel`.

    Threat model: the L_p ball of radius ``eps`` (``norm``) within the classifier's bounds; the attacker
    knows both networks and the threshold (white box, Carlini & Wagner 2017). Each example is sent to a
    class other than its own (default: the classifier's runner-up on the clean input) while the "detected"
    logit is pushed below it, i.e. the detection logit below ``threshold``. ``result.success`` marks the
    examples that ended misclassified as their target and undetected.

    Args:
        detector: a trained :class:`Detector`.
        x: ``(N, ...)`` inputs within the bounds. y: ``(N,)`` true classes.
        eps: budget (> 0). attack: a registered attack with a targeted mode (default ``pgd``).
        norm: the attack's norm (default ``linf``). threshold: default ``detector.threshold`` (set it with
            :meth:`Detector.calibrate`). scale: see :class:`EvasionModel`.
        targets: ``(N,)`` target classes, each different from ``y``; default the runner-up classes.
        generator: the attack's randomness. batch_size: the attack's chunk size.
        **options: the attack's hyper-parameters (e.g. ``steps=100``).

    Returns:
        The attack's :class:`~advlab.attacks.AttackResult` on the joint model (``labels``: the targets).

    Example:
        >>> import torch, advlab
        >>> from advlab.defenses import train_detector
        >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10).eval()
        >>> det = train_detector(clf, torch.rand(8, 1, 8, 8), torch.arange(8), eps=0.1, attacks=["fgsm"], epochs=1)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> r = adaptive_attack(det, x, clf(x).argmax(1), eps=0.1, steps=5, generator=torch.Generator().manual_seed(0))
        >>> r.x_adv.shape
        torch.Size([1, 4, 1, 8, 8])
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be an advlab Detector (train_detector), got {type(detector).__name__}")
    check_choice("attack", attack, list_attacks())
    if not attack_spec(attack).targeted:
        able = [a for a in list_attacks() if attack_spec(a).targeted]
        raise ValueError(f"attack {attack!r} has no targeted mode, which the adaptive attack needs; use one of "
                         f"{', '.join(able)}")
    eps = check_float("eps", eps, inclusive=False)
    x = check_batch(x, detector.bounds)
    y = check_labels(y, len(x), device=x.device)
    joint = EvasionModel(detector, threshold, scale)
    if targets is None:
        with torch.no_grad():
            was = detector.training
            detector.eval()
            try:
                logits = torch.cat([detector.outputs(x[i : i + 512])[0] for i in range(0, len(x), 512)])
            finally:
                detector.train(was)
        targets = _runner_up(logits, y)
    return get_attack(attack)(joint, x, targets, eps=eps, norm=norm, targeted=True, true_labels=y,
                              generator=generator, batch_size=batch_size, **options)


def evasion_rate(
    detector: Detector, x_adv: Tensor, y: Tensor, *, threshold: float | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """How many inputs are misclassified and not flagged by the detector at ``threshold``.

    Args:
        detector: a trained :class:`Detector`. x_adv: ``(N, ...)`` inputs (one budget of an attack).
        y: ``(N,)`` true classes. threshold: default ``detector.threshold``. batch_size: chunk size.

    Returns:
        JSON-ready ``{"evasion_rate", "misclassified", "flagged", "n", "threshold"}``: the fractions of all
        ``N`` inputs that are misclassified and unflagged, misclassified, flagged.

    Example:
        >>> import torch, advlab
        >>> from advlab.defenses import train_detector
        >>> g = torch.Generator().manual_seed(0)
        >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10, generator=g).eval()
        >>> det = train_detector(clf, torch.rand(8, 1, 8, 8, generator=g), torch.arange(8), eps=0.1,
        ...                      attacks=["fgsm"], epochs=1, generator=g)
        >>> r = evasion_rate(det, torch.rand(5, 1, 8, 8, generator=g), torch.arange(5))
        >>> n = r["n"]  # counts, to compare without float rounding
        >>> round(r["evasion_rate"] * n) <= min(round(r["misclassified"] * n), n - round(r["flagged"] * n))
        True
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be an advlab Detector (train_detector), got {type(detector).__name__}")
    x_adv = check_batch(x_adv, detector.bounds, "x_adv")
    y = check_labels(y, len(x_adv), device=x_adv.device)
    check_optional("batch_size", batch_size, check_int)
    t = detector.threshold if threshold is None else check_float("threshold", threshold, minimum=None)
    chunk = batch_size or len(x_adv)
    was = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            parts = [detector.outputs(x_adv[i : i + chunk]) for i in range(0, len(x_adv), chunk)]
    finally:
        detector.train(was)
    wrong = torch.cat([p[0] for p in parts]).argmax(dim=1) != y
    flagged = torch.cat([p[1] for p in parts]) > t
    return {"evasion_rate": float((wrong & ~flagged).float().mean()), "misclassified": float(wrong.float().mean()),
            "flagged": float(flagged.float().mean()), "n": len(x_adv), "threshold": t}


def detector_evasion(
    detector: Detector,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    fpr: float = 0.05,
    x_calibration: Tensor | None = None,
    steps: int = 100,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The naive and the adaptive PGD against a detector, at its threshold for ``fpr`` false positives.

    The threshold flags a fraction ``fpr`` of the clean inputs ``x_calibration`` (default ``x``). The naive
    attack is untargeted PGD on the classifier alone (the attacker ignores the detector); the adaptive one,
    :func:`adaptive_attack` with PGD. Both at budget ``eps`` with ``steps`` iterations.

    Returns:
        JSON-ready ``{"threshold", "fpr", "eps", "norm", "steps", "naive": {...}, "adaptive": {...}}`` where
        each attack's entry is :func:`evasion_rate`'s dict plus the detection ``auc`` of its examples
        against the clean inputs (:func:`detection_roc`).

    Example:
        >>> import torch, advlab
        >>> from advlab.defenses import train_detector
        >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10).eval()
        >>> det = train_detector(clf, torch.rand(8, 1, 8, 8), torch.arange(8), eps=0.1, attacks=["fgsm"], epochs=1)
        >>> r = detector_evasion(det, torch.rand(6, 1, 8, 8), torch.arange(6), eps=0.1, steps=3)
        >>> sorted(r["adaptive"])
        ['auc', 'evasion_rate', 'flagged', 'misclassified', 'n', 'threshold']
    """
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be an advlab Detector (train_detector), got {type(detector).__name__}")
    check_int("steps", steps)
    threshold = detector.threshold_at(x if x_calibration is None else x_calibration, fpr, batch_size)
    naive = pgd(detector.classifier, x, y, eps=eps, norm=norm, steps=steps, generator=generator,
                batch_size=batch_size).x_adv[0]
    with warnings.catch_warnings():  # examples already misclassified and unflagged are counted below anyway
        warnings.filterwarnings("ignore", category=AlreadyAtTargetWarning)
        adaptive = adaptive_attack(detector, x, y, eps=eps, norm=norm, threshold=threshold, steps=steps,
                                   generator=generator, batch_size=batch_size).x_adv[0]
    out: dict[str, Any] = {"threshold": threshold, "fpr": fpr, "eps": eps, "norm": norm, "steps": steps}
    for name, x_adv in (("naive", naive), ("adaptive", adaptive)):
        out[name] = {**evasion_rate(detector, x_adv, y, threshold=threshold, batch_size=batch_size),
                     "auc": detection_roc(detector, x, x_adv, batch_size=batch_size)["auc"]}
    return out


def detection_roc(
    detector: Callable[[Tensor], Tensor], x_clean: Tensor, x_adv: Tensor, *, batch_size: int | None = None
) -> dict[str, Any]:
    """ROC of a detector separating adversarial inputs ``x_adv`` (positives) from clean ones ``x_clean``.

    Args:
        detector: a :class:`Detector` or any function of inputs giving ``(N,)`` scores, higher for adversarial.
        x_clean: ``(N, ...)`` clean inputs. x_adv: ``(M, ...)`` adversarial inputs of the same example shape
            (one budget of an ``AttackResult``: ``result.x_adv[i]``).
        batch_size: score in chunks of this many (default all at once).

    Returns:
        JSON-ready ``{"auc", "fpr", "tpr", "thresholds", "n_clean", "n_adv"}``: the area under the curve and
        the curve (``sklearn.metrics.roc_curve``: ``fpr`` and ``tpr`` rise, ``thresholds`` fall; flagged
        means score >= threshold; the first threshold, above every score, flags nothing).

    Example:
        >>> import torch
        >>> roc = detection_roc(lambda x: x.flatten(1).mean(1), torch.rand(50, 4) * 0.5, torch.rand(50, 4) * 0.5 + 0.5)
        >>> roc["auc"], roc["fpr"][0], roc["tpr"][-1]
        (1.0, 0.0, 1.0)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if not callable(detector):
        raise TypeError(f"detector must be a Detector or a function of inputs, got {type(detector).__name__}")
    for name, t in (("x_clean", x_clean), ("x_adv", x_adv)):
        if not isinstance(t, Tensor) or t.dim() < 2 or len(t) == 0:
            raise TypeError(f"{name} must be a non-empty batch tensor (N, ...), got "
                            f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if x_adv.shape[1:] != x_clean.shape[1:]:
        hint = "; pass one budget of an AttackResult, result.x_adv[i]" if x_adv.shape[2:] == x_clean.shape[1:] else ""
        raise ValueError(f"x_adv examples have shape {tuple(x_adv.shape[1:])} but x_clean's are "
                         f"{tuple(x_clean.shape[1:])}{hint}")
    check_optional("batch_size", batch_size, check_int)

    def scores(x: Tensor) -> np.ndarray:
        if isinstance(detector, Detector):
            return detector.scores(x, batch_size).cpu().double().numpy()
        chunk = batch_size or len(x)
        with torch.no_grad():
            out = torch.cat([torch.as_tensor(detector(x[i : i + chunk])).reshape(-1)
                             for i in range(0, len(x), chunk)])
        return out.detach().cpu().double().numpy()

    s = np.concatenate([scores(x_clean), scores(x_adv)])
    if len(s) != len(x_clean) + len(x_adv):
        raise ValueError(f"the detector must give one score per input, got {len(s)} for "
                         f"{len(x_clean) + len(x_adv)} inputs")
    if not np.isfinite(s).all():
        raise ValueError("the detector gave NaN or inf scores; check its inputs and weights")
    truth = np.concatenate([np.zeros(len(x_clean)), np.ones(len(x_adv))])
    fpr, tpr, thresholds = roc_curve(truth, s)
    thresholds = thresholds.astype(float)
    if not np.isfinite(thresholds[0]):  # scikit-learn's "above every score": the next float above the highest
        thresholds[0] = math.nextafter(float(s.max()), math.inf)
    return {"auc": float(roc_auc_score(truth, s)), "fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr],
            "thresholds": [float(v) for v in thresholds], "n_clean": len(x_clean), "n_adv": len(x_adv)}
