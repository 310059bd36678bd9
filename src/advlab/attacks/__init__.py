"""Adversarial attacks: each a pure function ``attack(model, x, y, *, eps, ...) -> AttackResult``.

Every registered attack is also an attribute of this module (``advlab.attacks.pgd``) and is listed by
:func:`list_attacks`.
"""

from __future__ import annotations

from advlab.attacks.base import (
    ATTACKS,
    AttackContext,
    AttackResult,
    AttackSpec,
    attack_spec,
    get_attack,
    list_attacks,
    register_attack,
    run_attack,
)
from advlab.attacks.fgsm import fgm, fgsm

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "attack_spec",
    "fgm",
    "fgsm",
    "get_attack",
    "list_attacks",
    "register_attack",
    "run_attack",
]
