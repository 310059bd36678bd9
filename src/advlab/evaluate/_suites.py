"""Attack suites for :func:`~advlab.evaluate.robustness`: named, ordered lists of registered attacks with
their hyper-parameters, built in (``standard``, ``quick``, ``full``), registered by users
(:func:`register_suite`) or read from TOML (:func:`load_suite`).

A suite file::

    name = "pgd-and-square"
    description = "PGD with early stop, then Square"
    norms = ["linf", "l2"]

    [[attacks]]
    attack = "pgd"                 # a registered attack (advlab list attacks)
    name = "pgd-40"                # display name (default: the attack's name, "-t" appended when targeted)
    params = { steps = 40, early_stop = true }   # fields of the attack's config (default: its defaults)

    [[attacks]]
    attack = "apgd"
    targets = "top"                # targeted, over the top_k most likely other classes, one after another
    top_k = 3
    params = { loss = "dlr", steps = 50, early_stop = true }

Example:
    >>> from advlab.evaluate._suites import get_suite, list_suites
    >>> "standard" in list_suites()
    True
    >>> [a.name for a in get_suite("standard").attacks]
    ['apgd-ce', 'apgd-t', 'square']
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advlab._toml import tomllib
from advlab.attacks import attack_spec, list_attacks
from advlab.attacks._registry import CALL_ARGS
from advlab.threat import NORMS

TARGETS = ("top",)
_ATTACK_KEYS = ("attack", "name", "targets", "top_k", "params")
_SUITE_KEYS = ("name", "description", "norms", "attacks")


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite: a registered attack, its hyper-parameters and how it is targeted.

    Attributes:
        attack: the registered attack's name (``advlab.attacks.list_attacks()``).
        params: hyper-parameters, fields of the attack's config (``attack_spec(attack).config``); the others
            keep their defaults. The budget, norm, targets and generator are set by the evaluation.
        targets: ``None`` (untargeted) or ``"top"``: targeted at the ``top_k`` most likely other classes of
            the clean input, one after another, each on the points the previous target left robust.
        top_k: how many target classes with ``targets="top"`` (1 otherwise).
        name: the display name (default: the attack's name, ``-t`` appended when targeted).

    Raises:
        ValueError: an unknown attack (the message lists the valid ones), a parameter the attack does not
            take (the message lists those it takes), a bad value, an untargeted attack with ``targets``.

    Example:
        >>> SuiteAttack("apgd", {"loss": "dlr"}, targets="top", top_k=3).name
        'apgd-t'
    """

    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    targets: str | None = None
    top_k: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.attack, str):
            raise TypeError(f"attack must be a registered attack's name (str), got {type(self.attack).__name__}")
        if self.attack not in list_attacks():
            raise ValueError(f"unknown attack {self.attack!r}; valid attacks: {', '.join(list_attacks())}")
        if not isinstance(self.params, Mapping):
            raise TypeError(f"params of {self.attack!r} must be a mapping of hyper-parameters, "
                            f"got {type(self.params).__name__}")
        object.__setattr__(self, "params", dict(self.params))
        spec = attack_spec(self.attack)
        fields = [f.name for f in dataclasses.fields(spec.config)]
        for key in self.params:
            if key in CALL_ARGS:
                raise ValueError(f"params of {self.attack!r}: {key!r} is set by the evaluation, not by a suite "
                                 f"attack; remove it (the attack takes {', '.join(fields) or 'no parameters'})")
            if key not in fields:
                raise ValueError(f"attack {self.attack!r} has no parameter {key!r}; it takes "
                                 f"{', '.join(fields) or 'no parameters'}")
        self.config()  # validates the values
        if self.targets is not None and self.targets not in TARGETS:
            raise ValueError(f"targets must be None (untargeted) or 'top', got {self.targets!r}")
        if self.targets is not None and not spec.targeted:
            raise ValueError(f"attack {self.attack!r} has no targeted mode; drop targets")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.targets is None and self.top_k != 1:
            raise ValueError(f"top_k={self.top_k} needs targets='top'; set it or drop top_k")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if not self.name:
            object.__setattr__(self, "name", self.attack + ("-t" if self.targets else ""))

    def config(self) -> Any:
        """The attack's config dataclass built from :attr:`params` (its defaults for the others)."""
        return attack_spec(self.attack).config(**self.params)

    def full_params(self) -> dict[str, Any]:
        """Every hyper-parameter of the attack: :attr:`params` over the config's defaults."""
        return dataclasses.asdict(self.config())

    def to_dict(self) -> dict[str, Any]:
        """The attack with its full hyper-parameters (what an evaluation records)."""
        return {"name": self.name, "attack": self.attack, "targets": self.targets, "top_k": self.top_k,
                "params": self.full_params()}


@dataclass(frozen=True)
class Suite:
    """An ordered list of attacks run as a worst-case cascade by :func:`~advlab.evaluate.robustness`.

    Attributes:
        name: the suite's name. attacks: its :class:`SuiteAttack` s, in the order run.
        description: one line on what it is for. norms: the threat-model norms it supports (every attack
            must support each of them; default: every norm that all its attacks support).

    Example:
        >>> s = Suite("mine", (SuiteAttack("pgd", {"steps": 10}), SuiteAttack("square")))
        >>> s.norms, [a.name for a in s.attacks]
        (('linf', 'l2'), ['pgd', 'square'])
    """

    name: str
    attacks: tuple[SuiteAttack, ...]
    description: str = ""
    norms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a suite needs a non-empty name, got {self.name!r}")
        attacks = tuple(self.attacks)
        if not attacks:
            raise ValueError(f"suite {self.name!r} has no attacks; give at least one")
        for a in attacks:
            if not isinstance(a, SuiteAttack):
                raise TypeError(f"suite {self.name!r}: attacks must be SuiteAttack objects, got {type(a).__name__}")
        object.__setattr__(self, "attacks", attacks)
        norms = (self.norms,) if isinstance(self.norms, str) else tuple(self.norms)
        if not norms:  # every norm that all the attacks support
            norms = tuple(n for n in attack_spec(attacks[0].attack).norms
                          if all(n in attack_spec(a.attack).norms for a in attacks))
            if not norms:
                raise ValueError(f"suite {self.name!r}: its attacks share no norm; give attacks of one threat model")
        for norm in norms:
            if norm not in NORMS:
                raise ValueError(f"suite {self.name!r}: unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
            for a in attacks:
                if norm not in attack_spec(a.attack).norms:
                    raise ValueError(f"suite {self.name!r}: attack {a.name!r} ({a.attack}) does not support norm "
                                     f"{norm!r} (it supports {', '.join(attack_spec(a.attack).norms)}); drop the "
                                     f"norm from the suite's norms or the attack")
        object.__setattr__(self, "norms", norms)
        names = [a.name for a in attacks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"suite {self.name!r}: display names must be unique, {', '.join(twice)} appear twice; "
                             f"give the attacks distinct names")
        if not isinstance(self.description, str):
            raise TypeError(f"description must be a str, got {type(self.description).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The full definition: every attack with all its hyper-parameters."""
        return {"name": self.name, "description": self.description, "norms": list(self.norms),
                "attacks": [a.to_dict() for a in self.attacks]}


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite, *, replace: bool = False) -> Suite:
    """Registers ``suite`` under its name (``replace=True`` to redefine a registered one); returns it.

    Example:
        >>> s = register_suite(Suite("doc-pgd", (SuiteAttack("pgd", {"steps": 5}),)), replace=True)
        >>> get_suite("doc-pgd") is s
        True
    """
    if not isinstance(suite, Suite):
        raise TypeError(f"register_suite takes a Suite, got {type(suite).__name__}")
    if suite.name in _SUITES and not replace:
        raise ValueError(f"suite {suite.name!r} is already registered; pass replace=True to redefine it")
    _SUITES[suite.name] = suite
    return suite


def list_suites() -> list[str]:
    """The registered suites' names, sorted."""
    return sorted(_SUITES)


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``; ``ValueError`` listing the valid names if there is none."""
    if not isinstance(name, str):
        raise TypeError(f"suite name must be a str, got {type(name).__name__}")
    try:
        return _SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(list_suites())} "
                         f"(or a Suite object, or the path of a .toml suite file)") from None


def resolve_suite(suite: str | os.PathLike[str] | Suite) -> Suite:
    """A :class:`Suite` from a suite object, a registered name or the path of a ``.toml`` file."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, os.PathLike) or (isinstance(suite, str) and suite.lower().endswith(".toml")):
        return load_suite(suite)
    if isinstance(suite, str):
        return get_suite(suite)
    raise TypeError(f"suite must be a registered name, a Suite or a .toml path, got {type(suite).__name__}")


# ----------------------------------------------------------------------------------------------- TOML


def _line_of(lines: Sequence[str], key: str, block: int | None) -> int | None:
    """The 1-based line of ``key = ...`` at the top level (``block=None``) or in the ``block``-th
    ``[[attacks]]`` table (its ``params`` included), or ``None``."""
    headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*attacks\s*\]\]", line)]
    if block is None:
        first_table = next((i for i, line in enumerate(lines) if re.match(r"\s*\[", line)), len(lines))
        span = range(0, first_table)
    elif block < len(headers):
        end = headers[block + 1] if block + 1 < len(headers) else len(lines)
        span = range(headers[block], end)
    else:
        return None
    pattern = re.compile(rf"(^|[\s{{,.]){re.escape(key)}\s*=")
    for i in span:
        if pattern.search(lines[i].split("#", 1)[0]):
            return i + 1
    if block is not None and block < len(headers):
        return headers[block] + 1
    return None


class _Where:
    def __init__(self, path: Path, lines: Sequence[str]) -> None:
        self.path, self.lines = path, lines

    def error(self, field_name: str, message: str, key: str | None = None, block: int | None = None) -> ValueError:
        line = _line_of(self.lines, key, block) if key is not None else None
        at = f", line {line}" if line is not None else ""
        return ValueError(f"{self.path}{at}: {field_name}: {message}")


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Reads a suite from a TOML file (format in the module docstring); the suite is not registered.

    Raises:
        FileNotFoundError: no such file. ValueError: malformed TOML or a bad field; the message names the file,
            the line where it can be found and the field (``attacks[1].params.steps``), and for an unknown
            attack or parameter lists the valid ones.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.toml"
        >>> _ = p.write_text('name = "s"\\n[[attacks]]\\nattack = "fgsm"\\n')
        >>> load_suite(p).attacks[0].attack, load_suite(p).norms
        ('fgsm', ('linf',))
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"suite file {p} not found" + (" (it is a folder)" if p.is_dir() else ""))
    text = p.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{p}: not valid TOML: {err}") from None
    where = _Where(p, text.splitlines())
    for key in data:
        if key not in _SUITE_KEYS:
            raise where.error(key, f"unknown field; a suite file has {', '.join(_SUITE_KEYS)}", key)
    name = data.get("name", p.stem)
    if not isinstance(name, str) or not name:
        raise where.error("name", f"must be a non-empty string, got {name!r}", "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise where.error("description", "must be a string", "description")
    raw = data.get("attacks")
    if not isinstance(raw, list) or not raw:
        raise where.error("attacks", "a suite needs at least one [[attacks]] table with an attack = \"name\"",
                          "attacks")
    attacks = [_load_attack(where, i, entry) for i, entry in enumerate(raw)]
    if "norms" in data:
        norms = data["norms"]
        if isinstance(norms, str):
            norms = [norms]
        if not isinstance(norms, list) or not all(isinstance(n, str) for n in norms):
            raise where.error("norms", f"must be a list of norms such as [\"linf\", \"l2\"], got {norms!r}", "norms")
    else:  # the norms every attack supports (Suite's default)
        norms = []
    try:
        return Suite(name, tuple(attacks), description=description, norms=tuple(norms))
    except (ValueError, TypeError) as err:
        culprit: str | None = None
        if "norm" in str(err) and "norms" in data:
            culprit = "norms"
        elif "unique" in str(err):
            culprit = "name"
        raise where.error(culprit or "suite", str(err), culprit) from None


def _load_attack(where: _Where, i: int, entry: Any) -> SuiteAttack:
    label = f"attacks[{i}]"
    if not isinstance(entry, dict):
        raise where.error(label, "must be a table ([[attacks]])", block=i)
    for key in entry:
        if key not in _ATTACK_KEYS:
            raise where.error(f"{label}.{key}", f"unknown field; an attack has {', '.join(_ATTACK_KEYS)} "
                              f"(hyper-parameters go in params = {{ ... }})", key, i)
    attack = entry.get("attack")
    if not isinstance(attack, str):
        raise where.error(f"{label}.attack", f"missing or not a string; valid attacks: {', '.join(list_attacks())}",
                          "attack", i)
    if attack not in list_attacks():
        raise where.error(f"{label}.attack", f"unknown attack {attack!r}; valid attacks: {', '.join(list_attacks())}",
                          "attack", i)
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise where.error(f"{label}.params", "must be a table, e.g. params = { steps = 40 }", "params", i)
    fields = [f.name for f in dataclasses.fields(attack_spec(attack).config)]
    for key in params:
        if key not in fields:
            why = ("is set by the evaluation, not by a suite" if key in CALL_ARGS
                   else f"unknown parameter of attack {attack!r}")
            raise where.error(f"{label}.params.{key}", f"{why}; {attack} takes {', '.join(fields) or 'no parameters'}",
                              key, i)
    try:
        return SuiteAttack(attack, dict(params), targets=entry.get("targets"), top_k=entry.get("top_k", 1),
                           name=entry.get("name", ""))
    except (ValueError, TypeError) as err:
        message = str(err)
        for key in [*params, "targets", "top_k", "name"]:
            if re.search(rf"\b{re.escape(key)}\b", message):
                sub = f"params.{key}" if key in params else key
                raise where.error(f"{label}.{sub}", message, key, i) from None
        raise where.error(label, message, "attack", i) from None


# ------------------------------------------------------------------------------------------ built-ins

# The standard suite (see STANDARD's description): parameter-free APGD, then targeted APGD-DLR at the three
# most likely other classes, then Square; every stage stops per example at its first success.
STANDARD_TOP_K = 3
STANDARD_SQUARE_QUERIES = 1000

STANDARD = register_suite(Suite(
    "standard",
    (
        SuiteAttack("apgd", {"steps": 100, "loss": "ce", "early_stop": True}, name="apgd-ce"),
        SuiteAttack("apgd", {"steps": 100, "loss": "dlr", "early_stop": True}, targets="top",
                    top_k=STANDARD_TOP_K, name="apgd-t"),
        SuiteAttack("square", {"max_queries": STANDARD_SQUARE_QUERIES}, name="square"),
    ),
    description=(
        "APGD-CE (100 steps), targeted APGD-DLR at the 3 most likely other classes (100 steps each), Square "
        "(1,000 queries); each stage on the survivors of the previous, each example stopping at its first "
        "success. Per surviving example at most 200 + 600 passes of gradient attacks and 1,000 queries, about "
        "a fifth of AutoAttack's standard budget (APGD-T over 9 targets, FAB-T, Square with 5,000 queries)"
    ),
))
register_suite(Suite(
    "quick",
    (
        SuiteAttack("apgd", {"steps": 20, "loss": "ce", "early_stop": True}, name="apgd-ce"),
        SuiteAttack("apgd", {"steps": 20, "loss": "dlr", "early_stop": True}, targets="top", top_k=3,
                    name="apgd-t"),
    ),
    description="APGD-CE (20 steps) and targeted APGD-DLR at the 3 most likely other classes (20 steps each): "
                "for demos and tests, not for claims",
))
register_suite(Suite(
    "full",
    (
        SuiteAttack("apgd", {"steps": 100, "loss": "ce", "early_stop": True}, name="apgd-ce"),
        SuiteAttack("apgd", {"steps": 100, "loss": "dlr", "restarts": 2, "early_stop": True}, name="apgd-dlr"),
        SuiteAttack("apgd", {"steps": 100, "loss": "dlr", "early_stop": True}, targets="top", top_k=9,
                    name="apgd-t"),
        SuiteAttack("square", {"max_queries": 5000}, name="square"),
    ),
    description="AutoAttack-like budgets: APGD-CE (100 steps), untargeted APGD-DLR (2 restarts), targeted "
                "APGD-DLR at 9 target classes (100 steps each), Square (5,000 queries); early stop per example",
))
