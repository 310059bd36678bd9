"""The defense registry: every defense, of four kinds, with its typed options.

- ``training``: an adversarial-training method, a step function of the one training engine
  (:func:`advlab.defenses.train_defended`, ``advlab train --defense NAME``);
- ``failing``: a defense known to fail, paired with the adaptive attack that breaks it
  (:func:`advlab.defenses.evaluate_failing`);
- ``detector``: a detector of adversarial inputs;
- ``architecture``: a model family claimed to resist attacks (evaluated, not trained differently).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from advlab._registry import Registry

KINDS = ("training", "failing", "detector", "architecture")


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    Attributes:
        name: the registered name.
        kind: one of :data:`KINDS`.
        summary: one line on what it does.
        reference: the paper it follows.
        config: the frozen dataclass of its options (typed ``advlab train`` options for a training defense),
            or ``None`` when it has none.
        build: the kind's builder. ``training``: ``build(config, *, eps, norm, static) -> StepFn``;
            ``failing``: see :mod:`advlab.defenses._failing`; others: ``None`` or their own.
        norms: the norms of the threat model it defends (its default first).
        recipes: recommended training settings, ``Recipe`` field overrides keyed by ``"model/dataset"``,
            ``"model"``, ``"/dataset"`` or ``""`` (most specific first): the settings that reach the
            defense's targets in ``benchmarks/README.md``.
        model_options: recommended hyper-parameters of the zoo model, keyed as ``recipes`` (e.g. no dropout:
            adversarial training of ``cnn-small`` on MNIST is markedly more robust without it).
        semi_supervised: trains on labelled plus unlabelled data (``labelled=N``).
        uses_static: takes static, separately trained models (``static=[...]``).
        checks_overfitting: single-step training whose held-out check flags catastrophic overfitting (and
            restores the most robust epoch) by default.
    """

    name: str
    kind: str
    summary: str
    reference: str
    config: type[Any] | None = None
    build: Callable[..., Any] | None = None
    norms: tuple[str, ...] = ("linf",)
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    semi_supervised: bool = False
    uses_static: bool = False
    checks_overfitting: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"defense {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.config is not None and not (dataclasses.is_dataclass(self.config) and isinstance(self.config, type)):
            raise TypeError(f"config of defense {self.name!r} must be a dataclass type, got {self.config!r}")

    def defaults(self) -> dict[str, Any]:
        """The options' default values, from the config."""
        return {} if self.config is None else {f.name: f.default for f in dataclasses.fields(self.config)}

    def make_config(self, options: Mapping[str, Any] | Any = None) -> Any:
        """The config from ``options`` (a mapping of option values, an instance of the config, or ``None``
        for the defaults); an option the defense does not take is a ``ValueError`` naming its options."""
        if self.config is None:
            if options:
                raise ValueError(f"defense {self.name!r} takes no options, got {', '.join(sorted(options))}")
            return None
        if isinstance(options, self.config):
            return options
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options of defense {self.name!r} must be a mapping or a {self.config.__name__}, "
                            f"got {type(options).__name__}")
        given = dict(options or {})
        valid = set(self.defaults())
        unknown = sorted(set(given) - valid)
        if unknown:
            raise ValueError(
                f"defense {self.name!r} has no option(s) {', '.join(unknown)}; its options: "
                f"{', '.join(sorted(valid)) or '(none)'}"
            )
        return self.config(**given)

    def recipe_overrides(self, model: str, dataset: str | None) -> dict[str, Any]:
        """The recommended ``Recipe`` overrides for ``model`` on ``dataset`` (empty when there are none)."""
        return _most_specific(self.recipes, model, dataset)

    def recommended_model_options(self, model: str, dataset: str | None) -> dict[str, Any]:
        """The recommended hyper-parameters of ``model`` on ``dataset`` (empty when there are none)."""
        return _most_specific(self.model_options, model, dataset)


def _most_specific(table: Mapping[str, Mapping[str, Any]], model: str, dataset: str | None) -> dict[str, Any]:
    for key in (f"{model}/{dataset or ''}", model, f"/{dataset or ''}", ""):
        if key in table:
            return dict(table[key])
    return {}


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register_defense(spec: DefenseSpec) -> DefenseSpec:
    """Registers ``spec`` under ``spec.name``; a duplicate name is an error."""
    if not isinstance(spec, DefenseSpec):
        raise TypeError(f"register_defense takes a DefenseSpec, got {type(spec).__name__}")
    return DEFENSES.register(spec.name)(spec)


def defense_spec(name: str) -> DefenseSpec:
    """The :class:`DefenseSpec` registered as ``name``."""
    return DEFENSES.get(name)


def list_defenses(kind: str | None = None) -> list[str]:
    """Names of the registered defenses, of one kind (:data:`KINDS`) or all."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown defense kind {kind!r}; use one of {', '.join(KINDS)}")
    return [n for n in DEFENSES.names() if kind is None or DEFENSES.get(n).kind == kind]
