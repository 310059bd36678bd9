"""Black-box attacks that need more than one attack call: substitute models trained from an oracle's labels
(Papernot et al. 2017) and transfer attacks from one or several surrogate models (Liu et al. 2017).

Example:
    >>> import torch, advlab
    >>> from advlab.blackbox import EnsembleSurrogate, transfer_attack
    >>> x, y = advlab.load_dataset("digits", "test")
    >>> a = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
    >>> b = advlab.create_model("mlp", dataset="digits", generator=torch.Generator().manual_seed(1))
    >>> r = transfer_attack([a, b], {"b": b}, x[:20], y[:20], attack="fgsm", eps=0.1)
    >>> sorted(r.targets["b"])
    ['clean_accuracy', 'error_rate', 'n_correct', 'transfer_rate']
"""

from __future__ import annotations

from advlab.blackbox._run import substitute_attack_checkpoint
from advlab.blackbox._substitute import (
    SUBSTITUTE_MODEL_OPTIONS,
    SUBSTITUTE_RECIPE,
    BlackBoxReport,
    Substitute,
    check_attack_name,
    jacobian_augmentation,
    periodic_step,
    schedule_queries,
    shift_step,
    split_seed_set,
    substitute_attack,
    train_substitute,
)
from advlab.blackbox._transfer import (
    EnsembleSurrogate,
    TransferResult,
    predict_labels,
    rate_among_correct,
    transfer_attack,
)

__all__ = [
    "SUBSTITUTE_MODEL_OPTIONS",
    "SUBSTITUTE_RECIPE",
    "BlackBoxReport",
    "EnsembleSurrogate",
    "Substitute",
    "TransferResult",
    "check_attack_name",
    "jacobian_augmentation",
    "periodic_step",
    "predict_labels",
    "rate_among_correct",
    "schedule_queries",
    "shift_step",
    "split_seed_set",
    "substitute_attack",
    "substitute_attack_checkpoint",
    "train_substitute",
    "transfer_attack",
]
