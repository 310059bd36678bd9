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
from advlab.defenses._monitor import CatastrophicOverfittingWarning, MonitorConfig, RobustnessMonitor
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
    "DEFENSES",
    "KINDS",
    "CatastrophicOverfittingWarning",
    "DefenseSpec",
    "EnsembleATConfig",
    "FGSMATConfig",
    "FastATConfig",
    "FreeATConfig",
    "MonitorConfig",
    "PGDATConfig",
    "RFGSMATConfig",
    "RobustnessMonitor",
    "TRADESConfig",
    "VATConfig",
    "defense_recipe",
    "defense_spec",
    "list_defenses",
    "register_defense",
    "train_defended",
]
