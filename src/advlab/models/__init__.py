"""Models: the registry (``create_model``, ``list_models``, ``register_model``), the zoo, the
:class:`Classifier` wrapper and safetensors checkpoints.

Example:
    >>> import torch
    >>> from advlab.models import create_model
    >>> model = create_model("cnn-small", in_shape=(1, 28, 28), num_classes=10)
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from advlab.models import zoo as zoo  # registers the built-in models
from advlab.models._checkpoint_data import CheckpointData, load_checkpoint_data
from advlab.models._sklearn import (  # registers the scikit-learn models
    RBFSVM,
    SKLEARN_MODELS,
    ForestModel,
    KNNModel,
    LinearModel,
    TreeModel,
    from_sklearn,
    is_sklearn_model,
)
from advlab.models.checkpoint import (
    CheckpointExistsError,
    OutputBusyError,
    load_checkpoint,
    load_checkpoint_metadata,
    model_hash,
    reserve_checkpoint,
    save_checkpoint,
)
from advlab.models.classifier import Classifier, unchecked_inputs
from advlab.models.factory import MODELS, create_model, list_models, register_model, reset_parameters
from advlab.models.layers import BasicBlock, Maxout, RBFLayer, init_from_data, init_rbf_centers

__all__ = [
    "MODELS",
    "RBFSVM",
    "SKLEARN_MODELS",
    "BasicBlock",
    "CheckpointData",
    "CheckpointExistsError",
    "Classifier",
    "ForestModel",
    "KNNModel",
    "LinearModel",
    "Maxout",
    "OutputBusyError",
    "RBFLayer",
    "TreeModel",
    "create_model",
    "from_sklearn",
    "init_from_data",
    "init_rbf_centers",
    "is_sklearn_model",
    "list_models",
    "load_checkpoint",
    "load_checkpoint_data",
    "load_checkpoint_metadata",
    "model_hash",
    "register_model",
    "reserve_checkpoint",
    "reset_parameters",
    "save_checkpoint",
    "unchecked_inputs",
]
