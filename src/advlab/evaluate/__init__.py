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

from advlab.evaluate._active import ActiveTestResult, active_test
from advlab.evaluate._attack import EvalRecord, attack_checkpoint, evaluate_attack, json_safe
from advlab.evaluate._checks import CHECKS, run_checks
from advlab.evaluate._evaluation import Check, Evaluation, Found, StageCost
from advlab.evaluate._robustness import merge_found, robustness, robustness_checkpoint
from advlab.evaluate._suites import Suite, SuiteAttack, get_suite, list_suites, load_suite, register_suite
from advlab.evaluate._transfer import (
    KIND_ATTACKS,
    TransferMatrix,
    has_input_gradient,
    model_kind,
    transfer_matrix,
    transfer_matrix_checkpoints,
)

__all__ = [
    "CHECKS",
    "KIND_ATTACKS",
    "ActiveTestResult",
    "Check",
    "EvalRecord",
    "Evaluation",
    "Found",
    "StageCost",
    "Suite",
    "SuiteAttack",
    "TransferMatrix",
    "active_test",
    "attack_checkpoint",
    "evaluate_attack",
    "get_suite",
    "has_input_gradient",
    "json_safe",
    "list_suites",
    "load_suite",
    "merge_found",
    "model_kind",
    "register_suite",
    "robustness",
    "robustness_checkpoint",
    "run_checks",
    "transfer_matrix",
    "transfer_matrix_checkpoints",
]
