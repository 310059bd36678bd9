"""advlab: attack, defend and benchmark machine-learning models with adversarial examples.

Top-level entry points (imported lazily, so ``import advlab`` stays cheap)::

    import advlab
    x, y = advlab.load_dataset("digits", "train")
    model = advlab.create_model("cnn-small", dataset="digits")
    result = advlab.attacks.pgd(model, x[:64], y[:64], eps=[0.1, 0.2])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "AttackResult": "advlab.attacks",
    "list_attacks": "advlab.attacks",
    "dataset_info": "advlab.data",
    "list_datasets": "advlab.data",
    "load_dataset": "advlab.data",
    "list_defenses": "advlab.defenses",
    "keep_freed_memory": "advlab._allocator",
    "list_experiments": "advlab.experiments",
    "Classifier": "advlab.models",
    "create_model": "advlab.models",
    "list_models": "advlab.models",
    "load_checkpoint": "advlab.models",
    "save_checkpoint": "advlab.models",
    "LpBall": "advlab.threat",
    "Oracle": "advlab.oracle",
    "QueryBudgetError": "advlab.oracle",
}
_SUBMODULES = (
    "attacks", "blackbox", "data", "defenses", "evaluate", "experiments", "models", "oracle", "threat", "train",
)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]

if TYPE_CHECKING:
    from advlab import attacks, blackbox, data, defenses, evaluate, experiments, models, oracle, threat, train
    from advlab._allocator import keep_freed_memory
    from advlab.attacks import AttackResult, list_attacks
    from advlab.data import dataset_info, list_datasets, load_dataset
    from advlab.defenses import list_defenses
    from advlab.experiments import list_experiments
    from advlab.models import Classifier, create_model, list_models, load_checkpoint, save_checkpoint
    from advlab.oracle import Oracle, QueryBudgetError
    from advlab.threat import LpBall


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"advlab.{name}")
    raise AttributeError(f"module 'advlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
