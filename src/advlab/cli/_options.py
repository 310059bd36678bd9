"""Typed click options built from config dataclasses, so that every hyper-parameter is stated once.

:func:`config_options` turns every field of one config dataclass (``advlab train``: :class:`Recipe`) or
of several (``advlab attack``: every registered attack's config) into a typed option that defaults to
``None``, meaning "the config's own default"; :func:`given_options` collects the values that were set.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import click

F = typing.TypeVar("F", bound=Callable[..., Any])

# What an optional field takes on the command line to mean ``None`` (e.g. ``--schedule none``).
NONE = "none"
# The click type of each field type (a bool field is a ``--x/--no-x`` flag instead).
TYPES: Mapping[type, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


class ConfigField(NamedTuple):
    """One field over one or more configs: its base type (``int | None`` -> ``int``), whether it is
    optional (``None`` allowed in every config that has it) and the names of those configs."""

    type: Any
    owners: list[str]
    optional: bool


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def flag(name: str) -> str:
    """The option name of a field: ``step_size`` -> ``--step-size``."""
    return "--" + name.replace("_", "-")


def union_fields(configs: Mapping[str, type]) -> dict[str, ConfigField]:
    """Over several configs (by owner name): each field name, its type, its owners and whether it is
    optional. A field whose type differs between owners is an error (one name, one meaning)."""
    out: dict[str, ConfigField] = {}
    for owner, config in configs.items():
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            typ, optional = _split_optional(hints[f.name])
            if f.name not in out:
                out[f.name] = ConfigField(typ, [owner], optional)
                continue
            known = out[f.name]
            if known.type is not typ:
                raise TypeError(f"field {f.name!r} is {known.type} in one config and {typ} in {owner}'s")
            known.owners.append(owner)
            out[f.name] = known._replace(optional=known.optional and optional)
    return out


def attribute_help(config: type) -> dict[str, str]:
    """Field name -> description, from the ``Attributes:`` section of ``config``'s docstring."""
    _, _, section = (inspect.getdoc(config) or "").partition("Attributes:")
    out: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^ {4}(\w+):\s*(.*)$", line)
        if match:
            name = match[1]
            out[name] = match[2]
        elif name is not None and line.startswith(" " * 8):
            out[name] += " " + line.strip()
        elif line.strip():
            break  # the next section
    return {k: v.replace("``", "").strip() for k, v in out.items()}


class OrNone(click.ParamType):
    """``inner``, or the word ``none`` (returned as :data:`NONE`)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"{inner.name}|{NONE}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == NONE:
            return NONE
        return self.inner.convert(value, param, ctx)


def _param_type(name: str, field: ConfigField, choices: Sequence[str] | None,
                kinds: Mapping[type, click.ParamType]) -> click.ParamType:
    if choices is not None:
        return click.Choice([NONE, *choices] if field.optional else list(choices))
    if field.type not in kinds:
        raise TypeError(f"field {name!r} has type {field.type!r}, which has no command-line option yet")
    inner = kinds[field.type]
    return OrNone(inner) if field.optional else inner


def _help_text(text: str, optional: bool, default_text: str) -> str:
    text = text.rstrip(".")
    if optional:
        text = re.sub(r"\bNone\b", NONE, text)
    if not text.startswith((NONE, '"')):  # a literal value keeps its case
        text = text[:1].upper() + text[1:]
    return f"{text} {default_text}"


def config_options(
    configs: Mapping[str, type] | type,
    *,
    choices: Mapping[str, Sequence[str]] | None = None,
    help: Mapping[str, str] | None = None,
    default_text: str = "[default: the config's].",
    param_types: Mapping[type, click.ParamType] | None = None,
) -> Callable[[F], F]:
    """A decorator adding one option per field of ``configs`` (a config dataclass, or several by name,
    whose fields are merged by :func:`union_fields`).

    Every option defaults to ``None`` ("the config's value"): a bool field is ``--x/--no-x``, a string
    field with ``choices`` a choice, other fields are typed by ``param_types`` (over :data:`TYPES`); an
    optional field (``None`` allowed) also takes ``none``, passed as :data:`NONE` (see
    :func:`given_options`). Help is ``help[name]`` (default: the ``Attributes:`` docstring section of
    the configs), then ``default_text``. Options come in field order for one config, sorted by name for
    several.
    """
    several = not isinstance(configs, type)
    by_owner: Mapping[str, type] = configs if not isinstance(configs, type) else {configs.__name__: configs}
    fields = union_fields(by_owner)
    if help is None:
        help = {}
        for config in reversed(list(by_owner.values())):  # the first config that describes a field wins
            help = {**help, **attribute_help(config)}
    kinds = {**TYPES, **(param_types or {})}
    names = sorted(fields) if several else list(fields)

    def decorate(func: F) -> F:
        for name in reversed(names):
            field = fields[name]
            text = _help_text(help.get(name, name.replace("_", " ")), field.optional, default_text)
            if field.type is bool:
                option = click.option(f"{flag(name)}/--no-{flag(name)[2:]}", name, default=None, help=text)
            else:
                kind = _param_type(name, field, (choices or {}).get(name), kinds)
                option = click.option(flag(name), name, type=kind, default=None, help=text)
            func = option(func)
        return func

    return decorate


def given_options(values: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were given (not ``None``), with :data:`NONE` back to ``None``."""
    keep = set(names)
    return {k: (None if v == NONE else v) for k, v in values.items() if k in keep and v is not None}
