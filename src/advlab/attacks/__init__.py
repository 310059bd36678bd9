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
from advlab.attacks.bim import bim, illc
from advlab.attacks.fgsm import fgm, fgsm
from advlab.attacks.mifgsm import mifgsm
from advlab.attacks.pgd import pgd
from advlab.attacks.rfgsm import rfgsm

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "attack_spec",
    "bim",
    "fgm",
    "fgsm",
    "get_attack",
    "illc",
    "list_attacks",
    "mifgsm",
    "pgd",
    "register_attack",
    "rfgsm",
    "run_attack",
]
