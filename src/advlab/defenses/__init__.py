"""Defenses: adversarial training (step functions of the one training engine), the defenses known to fail
with the adaptive attacks that break them, detectors, and model families claimed to resist attacks.

Every defense is registered (:func:`list_defenses`, ``advlab list defenses``) with its kind and typed options
(:class:`DefenseSpec`).
"""

from __future__ import annotations

from advlab.defenses._registry import (
    DEFENSES,
    KINDS,
    DefenseSpec,
    defense_spec,
    list_defenses,
    register_defense,
)

__all__ = [
    "DEFENSES",
    "KINDS",
    "DefenseSpec",
    "defense_spec",
    "list_defenses",
    "register_defense",
]
