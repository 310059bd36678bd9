"""The attack suites of :func:`advlab.evaluate.robustness` as the sweep sees them: a suite's full definition
(a plain JSON dict, part of every robustness cell's config, so that a changed suite is a new cell) and the
suite object rebuilt from it in the worker."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


def list_suite_names() -> list[str]:
    """The registered suites' names."""
    from advlab.evaluate._suites import list_suites

    return list(list_suites())


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def suite_definition(suite: str | os.PathLike[str]) -> dict[str, Any]:
    """The full definition of a registered suite (by name) or of a suite TOML file (a path), as plain JSON."""
    from advlab.evaluate import _suites

    obj = _suites.load_suite(Path(suite)) if isinstance(suite, os.PathLike) else _suites.get_suite(suite)
    to_dict = getattr(obj, "to_dict", None)
    return dict(_to_plain(to_dict() if callable(to_dict) else obj))


def suite_from_definition(definition: dict[str, Any]) -> Any:
    """The :class:`~advlab.evaluate._suites.Suite` of a definition made by :func:`suite_definition`, to pass
    to ``robustness(suite=...)``."""
    from advlab.evaluate import _suites

    attacks = tuple(
        _suites.SuiteAttack(a["attack"], dict(a.get("params") or {}), targets=a.get("targets"),
                            top_k=int(a.get("top_k", 1)), name=str(a.get("name", "")))
        for a in definition["attacks"]
    )
    return _suites.Suite(str(definition["name"]), attacks, description=str(definition.get("description", "")),
                         norms=tuple(definition.get("norms") or ("linf", "l2")))
