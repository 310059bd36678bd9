"""Defenses: adversarial training (step functions of the one training engine), the defenses known to fail
with the adaptive attacks that break them, detectors, and model families claimed to resist attacks.

Every defense is registered (:func:`list_defenses`, ``advlab list defenses``) with its kind and typed options
(:class:`DefenseSpec`).
"""

from __future__ import annotations

from advlab.defenses._adversarial import (
    EnsembleATConfig,
    FastATConfig,
    FGSMATConfig,
    FreeATConfig,
    PGDATConfig,
    RFGSMATConfig,
)
from advlab.defenses._detector import Detector, DetectorConfig, default_layer
from advlab.defenses._detector_attack import (
    EvasionModel,
    adaptive_attack,
    detection_roc,
    detector_evasion,
    evasion_rate,
)
from advlab.defenses._detector_train import train_detector
from advlab.defenses._failing import (
    BPDA,
    EOT,
    AttackPlan,
    Defended,
    FailingDefense,
    GaussianNoise,
    JPEGLike,
    LogitEnsemble,
    Quantize,
    RandomDropout,
    bpda,
    evaluate_failing,
)
from advlab.defenses._monitor import CatastrophicOverfittingWarning, MonitorConfig, RobustnessMonitor
from advlab.defenses._rbf import RBFConfig, fgsm_error_confidence
from advlab.defenses._registry import (
    DEFENSES,
    KINDS,
    DefenseSpec,
    defense_spec,
    list_defenses,
    register_defense,
)
from advlab.defenses._regularised import TRADESConfig, VATConfig
from advlab.defenses._train import defense_recipe, train_defended

__all__ = [
    "BPDA",
    "DEFENSES",
    "EOT",
    "KINDS",
    "AttackPlan",
    "CatastrophicOverfittingWarning",
    "Defended",
    "DefenseSpec",
    "Detector",
    "DetectorConfig",
    "EnsembleATConfig",
    "EvasionModel",
    "FGSMATConfig",
    "FailingDefense",
    "FastATConfig",
    "FreeATConfig",
    "GaussianNoise",
    "JPEGLike",
    "LogitEnsemble",
    "MonitorConfig",
    "PGDATConfig",
    "Quantize",
    "RBFConfig",
    "RFGSMATConfig",
    "RandomDropout",
    "RobustnessMonitor",
    "TRADESConfig",
    "VATConfig",
    "adaptive_attack",
    "bpda",
    "default_layer",
    "defense_recipe",
    "defense_spec",
    "detection_roc",
    "detector_evasion",
    "evaluate_failing",
    "evasion_rate",
    "fgsm_error_confidence",
    "list_defenses",
    "register_defense",
    "train_defended",
    "train_detector",
]
