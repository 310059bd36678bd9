"""Evaluation: run attacks on models and turn their results into records (accuracy, success, cost,
provenance). Batching and target choice live here and in the attack engine, not in the command line.

Example:
    >>> import torch, advlab
    >>> from advlab.evaluate import evaluate_attack
    >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
    >>> rec = evaluate_attack(model, torch.rand(8, 1, 8, 8), torch.arange(8) % 10, "fgsm", eps=[0.1, 0.2])
    >>> [row["eps"] for row in rec.results]
    [0.1, 0.2]
"""

from __future__ import annotations

from advlab.evaluate._attack import EvalRecord, attack_checkpoint, evaluate_attack, json_safe

__all__ = ["EvalRecord", "attack_checkpoint", "evaluate_attack", "json_safe"]
