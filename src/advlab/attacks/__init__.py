"""Adversarial attacks: each a pure function ``attack(model, x, y, *, eps, ...) -> AttackResult``.

Every registered attack is an attribute of this module (``advlab.attacks.pgd``, the function) and is listed
by :func:`list_attacks`; its implementation lives in a private module of its own (``advlab.attacks._pgd``)
and its hyper-parameters in a config dataclass exported here (``PGDConfig``), registered with the attack.
"""

from __future__ import annotations

from advlab.attacks._apgd import APGDConfig, apgd
from advlab.attacks._bim import BIMConfig, bim, bim_schedule, illc
from advlab.attacks._blackbox import BlackBoxContext, run_blackbox
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._craft import craft, craft_config, craftable
from advlab.attacks._cw import CWConfig, CWLinfConfig, cw, cw_linf
from advlab.attacks._deepfool import DeepFoolConfig, deepfool
from advlab.attacks._engine import run_attack
from advlab.attacks._estimate import EstimatedGradients, NESConfig, SPSAConfig, nes, spsa
from advlab.attacks._fgsm import FGMConfig, fgm, fgsm
from advlab.attacks._hsja import HSJAConfig, hsja
from advlab.attacks._jsma import JSMAConfig, jsma
from advlab.attacks._knn import KNNConfig, knn
from advlab.attacks._linear import WeightSignConfig, weight_sign
from advlab.attacks._losses import LOSSES, ce_objective, dlr_objective, margin_objective, objective
from advlab.attacks._mifgsm import MIFGSMConfig, mifgsm
from advlab.attacks._mode import attack_mode, progress
from advlab.attacks._pgd import PGDConfig, pgd
from advlab.attacks._random import RandomDraw
from advlab.attacks._registry import (
    ATTACKS,
    CALL_ARGS,
    AttackSpec,
    attack_spec,
    get_attack,
    list_attacks,
    register_attack,
)
from advlab.attacks._result import AttackResult
from advlab.attacks._rfgsm import RFGSMConfig, rfgsm
from advlab.attacks._simba import SimBAConfig, simba
from advlab.attacks._square import SquareConfig, square
from advlab.attacks._tree import TreeConfig, TreePapernotConfig, tree, tree_papernot
from advlab.attacks._warnings import AlreadyAtTargetWarning, RobustnessWarning

__all__ = [
    "ATTACKS",
    "CALL_ARGS",
    "LOSSES",
    "APGDConfig",
    "AlreadyAtTargetWarning",
    "AttackContext",
    "AttackResult",
    "AttackSpec",
    "BIMConfig",
    "BlackBoxContext",
    "CWConfig",
    "CWLinfConfig",
    "DeepFoolConfig",
    "EstimatedGradients",
    "FGMConfig",
    "HSJAConfig",
    "JSMAConfig",
    "KNNConfig",
    "Kernel",
    "MIFGSMConfig",
    "NESConfig",
    "PGDConfig",
    "RFGSMConfig",
    "RandomDraw",
    "RobustnessWarning",
    "SPSAConfig",
    "SimBAConfig",
    "SquareConfig",
    "TreeConfig",
    "TreePapernotConfig",
    "WeightSignConfig",
    "apgd",
    "attack_mode",
    "attack_spec",
    "bim",
    "bim_schedule",
    "ce_objective",
    "craft",
    "craft_config",
    "craftable",
    "cw",
    "cw_linf",
    "deepfool",
    "dlr_objective",
    "fgm",
    "fgsm",
    "get_attack",
    "hsja",
    "illc",
    "jsma",
    "knn",
    "list_attacks",
    "margin_objective",
    "mifgsm",
    "nes",
    "objective",
    "pgd",
    "progress",
    "register_attack",
    "rfgsm",
    "run_attack",
    "run_blackbox",
    "simba",
    "spsa",
    "square",
    "tree",
    "tree_papernot",
    "weight_sign",
]
