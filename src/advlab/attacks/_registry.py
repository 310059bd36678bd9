"""The attack registry: each attack's function, its hyper-parameter config and the norms it supports."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advlab._registry import Registry
from advlab.attacks._result import AttackResult

# A kernel factory: ``kernel(config, norm) -> Kernel`` (see :mod:`advlab.attacks._context`).
KernelFactory = Callable[[Any, str], Callable[..., Any]]

# Arguments every attack function takes besides its hyper-parameters (the config's fields).
CALL_ARGS = ("model", "x", "y", "eps", "norm", "targeted", "generator", "batch_size", "true_labels")


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the registered name. fn: the attack function.
        norms: the threat-model norms it supports, its default first.
        config: the frozen dataclass of its hyper-parameters; its fields and defaults are the attack
            function's keyword arguments beyond :data:`CALL_ARGS` (a test checks that they agree).
        targeted: whether it has a targeted mode. min_norm: a minimum-norm attack (run once, projected
            onto every budget). summary: the first line of the function's docstring.
        kernel: ``kernel(config, norm)`` builds the attack's kernel, for :func:`~advlab.attacks.craft` (the
            lean path of adversarial training); ``None`` for attacks not offered there.
        models: the kinds of model the attack applies to (``kind`` of the modules built by
            :func:`advlab.models.from_sklearn`: ``tree``, ``knn``, ``linear``, ...); empty: any model that
            returns logits.
    """

    name: str
    fn: Callable[..., AttackResult]
    norms: tuple[str, ...]
    config: type[Any]
    targeted: bool
    min_norm: bool
    summary: str
    kernel: KernelFactory | None = None
    models: tuple[str, ...] = ()

    @property
    def default_norm(self) -> str:
        """The norm the attack uses when none is given."""
        return self.norms[0]

    def defaults(self) -> dict[str, Any]:
        """The hyper-parameters' default values, from the config."""
        return {f.name: f.default for f in dataclasses.fields(self.config)}


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(
    name: str, *, norms: tuple[str, ...], config: type, targeted: bool = True, min_norm: bool = False,
    kernel: KernelFactory | None = None, models: tuple[str, ...] = (),
) -> Callable[[Callable[..., AttackResult]], Callable[..., AttackResult]]:
    """Registers an attack function under ``name`` with its config dataclass and the norms it supports
    (the first is its default); ``kernel(config, norm)``, when given, makes it available to
    :func:`~advlab.attacks.craft`; ``models`` names the model kinds it is limited to (see :class:`AttackSpec`)."""
    if not (dataclasses.is_dataclass(config) and isinstance(config, type)):
        raise TypeError(f"config of attack {name!r} must be a dataclass type, got {config!r}")

    def decorator(fn: Callable[..., AttackResult]) -> Callable[..., AttackResult]:
        doc = (fn.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        ATTACKS.register(name)(AttackSpec(name, fn, norms, config, targeted, min_norm, summary, kernel, models))
        return fn

    return decorator


def get_attack(name: str) -> Callable[..., AttackResult]:
    """The attack function registered as ``name``."""
    return ATTACKS.get(name).fn


def attack_spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` registered as ``name``."""
    return ATTACKS.get(name)


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return ATTACKS.names()
