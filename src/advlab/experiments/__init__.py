"""The field's classic experiments, each reproducible with one command.

Entries register with :data:`EXPERIMENTS`; ``list_experiments()`` names them.
"""

from __future__ import annotations

from typing import Any

from advlab._registry import Registry

EXPERIMENTS: Registry[Any] = Registry("experiment")
register_experiment = EXPERIMENTS.register


def list_experiments() -> list[str]:
    """Names of the registered experiments."""
    return EXPERIMENTS.names()
