"""advlab: attack, defend and benchmark machine-learning models with adversarial examples.

Top-level entry points::

    import advlab
    x, y = advlab.load_dataset("digits", "train")
    model = advlab.create_model("cnn-small", dataset="digits")
    result = advlab.attacks.pgd(model, x[:64], y[:64], eps=[0.1, 0.2])
"""

from __future__ import annotations

__version__ = "0.1.0"

from advlab import attacks
from advlab.attacks import AttackResult, list_attacks
from advlab.data import dataset_info, list_datasets, load_dataset
from advlab.defenses import list_defenses
from advlab.experiments import list_experiments
from advlab.models import Classifier, create_model, list_models, load_checkpoint, save_checkpoint
from advlab.threat import LpBall

__all__ = [
    "AttackResult",
    "Classifier",
    "LpBall",
    "__version__",
    "attacks",
    "create_model",
    "dataset_info",
    "list_attacks",
    "list_datasets",
    "list_defenses",
    "list_experiments",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "save_checkpoint",
]
