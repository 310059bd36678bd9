"""Adversarial attacks: each a pure function ``attack(model, x, y, *, eps, ...) -> AttackResult``.

Every registered attack is also an attribute of this module (``advlab.attacks.pgd``) and is listed by
:func:`list_attacks`.
"""

from __future__ import annotations

from advlab.attacks.apgd import apgd
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
from advlab.attacks.cw import cw, cw_linf
from advlab.attacks.deepfool import deepfool
from advlab.attacks.fgsm import fgm, fgsm
from advlab.attacks.jsma import jsma
from advlab.attacks.mifgsm import mifgsm
from advlab.attacks.pgd import pgd
from advlab.attacks.rfgsm import rfgsm

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "apgd",
    "attack_spec",
    "bim",
    "cw",
    "cw_linf",
    "deepfool",
    "fgm",
    "fgsm",
    "get_attack",
    "illc",
    "jsma",
    "list_attacks",
    "mifgsm",
    "pgd",
    "register_attack",
    "rfgsm",
    "run_attack",
]
