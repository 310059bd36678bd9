"""RBF networks as a defense: an architecture evaluated, not trained differently.

Reference: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
(Sec. 7): a shallow RBF network misclassifies most FGSM examples too, but with *low confidence* on its
errors, where linear models (maxout networks, ReLU CNNs) extrapolate into confident mistakes.
:func:`fgsm_error_confidence` measures both: the FGSM error rate and the mean softmax confidence on the
errors, next to the confidence on the correct ones and on the clean inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_bool, check_int, check_optional
from advlab.attacks import attack_mode, fgsm
from advlab.defenses._registry import DefenseSpec, register_defense
from advlab.models import Classifier, create_model

__all__ = ["RBFConfig", "fgsm_error_confidence"]


@dataclass(frozen=True)
class RBFConfig:
    """Options of the ``rbf`` architecture (the zoo model ``rbf``): Gaussian units and whether their
    activations are standardised by a batch norm before the linear read-out."""

    num_centers: int = 500
    batch_norm: bool = True

    def __post_init__(self) -> None:
        check_int("num_centers", self.num_centers)
        check_bool("batch_norm", self.batch_norm)


def _build(config: RBFConfig, **shape: Any) -> Classifier:
    """The registry's builder: ``create_model("rbf", **shape)`` with the options of ``config`` (train it with
    ``advlab.train.train_model("rbf", ...)``, which places the centres on the data by k-means++ first)."""
    return create_model("rbf", num_centers=config.num_centers, batch_norm=config.batch_norm, **shape)


def _mean(values: Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def fgsm_error_confidence(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """FGSM error rate and softmax confidence on the errors, per budget (Goodfellow et al. 2015, Sec. 7).

    Threat model: L∞ ball of radius ``eps`` within the model's bounds; FGSM (:func:`advlab.attacks.fgsm`),
    untargeted, on the cross-entropy. The confidence of a prediction is its softmax probability (the
    largest one); the model runs in evaluation mode (restored after).

    Args:
        model: logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` true classes.
        eps: one budget or a sequence of budgets (raw input units, >= 0; 0 gives the clean numbers).
        batch_size: chunk size of the attack and of the forward passes (default all at once).

    Returns:
        One JSON-ready dict per budget, in order: ``eps``; ``error_rate`` (fraction of the ``n`` adversarial
        examples misclassified) and ``n_errors``; ``confidence_errors`` and ``confidence_correct``, the mean
        confidence on the misclassified and on the correctly classified adversarial examples (``None`` when
        there are none); ``clean_error_rate`` and ``confidence_clean``, the same on the clean inputs.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> rows = fgsm_error_confidence(model, torch.rand(6, 1, 8, 8), torch.arange(6), eps=[0.0, 0.1])
        >>> [row["eps"] for row in rows], rows[0]["error_rate"] == rows[0]["clean_error_rate"]
        ([0.0, 0.1], True)
    """
    check_optional("batch_size", batch_size, check_int)
    result = fgsm(model, x, y, eps=eps, batch_size=batch_size)
    y = result.labels
    chunk = batch_size or len(x)

    def confidences(inputs: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            probs = torch.cat([torch.softmax(model(inputs[i : i + chunk]), dim=1)
                               for i in range(0, len(inputs), chunk)])
        conf, pred = probs.max(dim=1)
        return conf, pred

    rows: list[dict[str, Any]] = []
    with attack_mode(model):
        clean_conf, clean_pred = confidences(x)
        for i, e in enumerate(result.eps):
            conf, pred = confidences(result.x_adv[i])
            wrong = pred != y
            rows.append({
                "eps": e,
                "n": len(x),
                "error_rate": float(wrong.float().mean()),
                "n_errors": int(wrong.sum()),
                "confidence_errors": _mean(conf[wrong]),
                "confidence_correct": _mean(conf[~wrong]),
                "clean_error_rate": float((clean_pred != y).float().mean()),
                "confidence_clean": float(clean_conf.mean()),
            })
    return rows


register_defense(DefenseSpec(
    name="rbf",
    kind="architecture",
    summary="A shallow Gaussian RBF network: errs under FGSM, with low confidence on its errors.",
    reference='Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015',
    config=RBFConfig,
    build=_build,
    norms=("linf",),
))
