"""Defenses: adversarial-training step functions, detectors and input transformations.

Entries register with :data:`DEFENSES`; ``list_defenses()`` names them.
"""

from __future__ import annotations

from typing import Any

from advlab._registry import Registry

DEFENSES: Registry[Any] = Registry("defense")
register_defense = DEFENSES.register


def list_defenses() -> list[str]:
    """Names of the registered defenses."""
    return DEFENSES.names()
