"""Default training recipes per model (and per dataset where it matters).

The numbers below are the settings measured in ``benchmarks/README.md`` ("Training"); they reach the
accuracy targets listed there on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a standard training run; ``fit_kwargs()`` gives the arguments of ``fit``.

    Attributes:
        epochs: passes over the training data.
        lr: learning rate (peak learning rate under ``"onecycle"``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        batch_size: examples per step.
        schedule: ``None``, ``"cosine"`` or ``"onecycle"``.
        weight_decay: weight decay.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        grad_clip: gradient-norm clipping, or ``None``.
    """

    epochs: int
    lr: float
    optimizer: str = "adam"
    batch_size: int = 128
    schedule: str | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    grad_clip: float | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """The recipe as keyword arguments of :func:`advlab.train.fit`."""
        return asdict(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the recipe."""
        return asdict(self)


# Default recipe of each model, used for any dataset without an override below.
RECIPES: dict[str, Recipe] = {
    "softmax": Recipe(epochs=5, lr=1e-2, batch_size=128, schedule="cosine"),
    "mlp": Recipe(epochs=5, lr=1e-3, batch_size=128, schedule="cosine"),
    "cnn-small": Recipe(epochs=3, lr=3e-3, batch_size=128, schedule="onecycle"),
    # Dropout (0.2 in, 0.5 hidden) makes maxout slow to converge: 5 epochs give ~98.1 %, 20 give ~98.7 %.
    "maxout": Recipe(epochs=20, lr=1e-3, batch_size=64, schedule="cosine"),
    "rbf": Recipe(epochs=5, lr=1e-2, batch_size=128, schedule="cosine"),
    "lenet5": Recipe(epochs=5, lr=2e-3, batch_size=128, schedule="onecycle"),
    "resnet-tiny": Recipe(epochs=30, lr=2e-3, optimizer="adamw", batch_size=128, schedule="onecycle",
                          weight_decay=5e-4),
}

# (model, dataset) -> recipe, where a dataset needs different settings from the model's default.
OVERRIDES: dict[tuple[str, str], Recipe] = {
    # 1,437 training images of 8x8: more epochs, each of few steps.
    ("cnn-small", "digits"): Recipe(epochs=12, lr=3e-3, batch_size=64, schedule="onecycle"),
}

# Fallback for a model without a recipe (e.g. one a user registered).
DEFAULT_RECIPE = Recipe(epochs=5, lr=1e-3, batch_size=128, schedule="cosine")


def get_recipe(model: str, dataset: str | None = None, **overrides: Any) -> Recipe:
    """The training recipe for ``model`` (on ``dataset``), with ``overrides`` applied.

    Args:
        model: a model name (``advlab.list_models()``); unknown names get :data:`DEFAULT_RECIPE`.
        dataset: a dataset name, or ``None`` for the model's default recipe.
        **overrides: fields of :class:`Recipe` to replace; ``None`` values are ignored, so CLI options
            that were not given can be passed straight through.

    Example:
        >>> get_recipe("cnn-small", "mnist", epochs=1).epochs
        1
    """
    recipe = OVERRIDES.get((model, dataset or ""), RECIPES.get(model, DEFAULT_RECIPE))
    valid = set(Recipe.__dataclass_fields__)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"unknown recipe field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(recipe, **changes)


def prepare_model(model: nn.Module, x_train: Tensor, *, generator: torch.Generator | None = None) -> bool:
    """Data-dependent initialisation that standard training needs before :func:`~advlab.train.fit`.

    Today: a model holding an RBF layer (``rbf``) gets its centres placed on the training inputs by
    k-means++ and its widths set from the centre spacing
    (:func:`advlab.models.init_rbf_centers`); gradient descent from random centres in 784 dimensions
    barely moves. Other models are left unchanged.

    Args:
        model: the freshly built model.
        x_train: raw training inputs ``(N, C, H, W)`` (as given to ``fit``).
        generator: randomness of the initialisation (reproducible runs pass a seeded generator).

    Returns:
        ``True`` when the model was changed.

    Example:
        >>> from advlab.models import create_model
        >>> model = create_model("rbf", in_shape=(1, 8, 8), num_classes=10, num_centers=16)
        >>> prepare_model(model, torch.rand(100, 1, 8, 8), generator=torch.Generator().manual_seed(0))
        True
    """
    from advlab.models.layers import RBFLayer, init_rbf_centers

    if any(isinstance(m, RBFLayer) for m in model.modules()):
        init_rbf_centers(model, x_train, generator=generator)
        return True
    return False
