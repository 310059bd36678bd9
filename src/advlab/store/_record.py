"""One result of the store: :class:`Record`, keyed by :func:`config_hash` of its full configuration."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

RECORD_KINDS = ("robustness", "attack", "train", "transfer", "blackbox")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value``: keys sorted, no spaces, tuples as lists, floats by ``repr``.

    Raises ``ValueError`` for NaN/inf (a configuration must be finite) and ``TypeError`` for values JSON
    cannot hold.

    Example:
        >>> canonical_json({"b": (1, 2.5), "a": "x"})
        '{"a":"x","b":[1,2.5]}'
    """
    def check(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"a configuration value is {v}; configurations must be finite numbers")
        if isinstance(v, dict):
            return {str(k): check(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [check(x) for x in v]
        return v

    return json.dumps(check(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def now_iso() -> str:
    """The current time as an ISO-8601 UTC timestamp with microseconds (a record's ``started``/``finished``).

    Example:
        >>> t = now_iso()
        >>> t.endswith("+00:00"), parse_iso(t).tzinfo is not None
        (True, True)
    """
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    """Parses an ISO-8601 timestamp (``Z`` accepted for UTC; a timestamp without a zone is taken as UTC) into
    an aware ``datetime``. Raises ``ValueError`` naming the text when it is not ISO-8601.

    Example:
        >>> parse_iso("2024-05-01T12:00:00Z") == parse_iso("2024-05-01T14:00:00+02:00")
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"a timestamp must be an ISO-8601 string, got {type(text).__name__}")
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(
            f"timestamp {text!r} is not ISO-8601 (e.g. '2024-05-01T12:00:00+00:00'); use advlab.store.now_iso()"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def config_hash(config: dict[str, Any]) -> str:
    """The SHA-256 (hex) of the canonical JSON of a configuration: the key of its record in the store.

    Two configurations that differ only in key order hash the same; ``1`` and ``1.0`` hash differently
    (JSON keeps them apart), so configurations are built from typed dataclasses.

    Example:
        >>> config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
        True
    """
    if not isinstance(config, dict):
        raise TypeError(f"a configuration must be a dict, got {type(config).__name__}")
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


@dataclass
class Record:
    """One computed cell: what was run (``config``, its ``key``), on what (``model_hash``), with which
    ``seeds`` and library ``versions``, what came out (``metrics``, ``checks``, ``artifacts``) and what it
    cost (``cost``), with timestamps.

    Attributes:
        key: :func:`config_hash` of ``config``.
        kind: ``"robustness"`` (an :class:`~advlab.evaluate.Evaluation`), ``"attack"`` (an
            :class:`~advlab.evaluate.EvalRecord`), ``"train"``, ``"transfer"`` or ``"blackbox"``.
        config: the full configuration (strict JSON).
        metrics: the results (strict JSON; for ``"robustness"``, :meth:`Evaluation.to_dict` without
            ``checks``, ``cost`` and ``config``).
        checks: the self-checks' verdicts (:meth:`Check.to_dict` each).
        cost: ``n_forward``, ``n_backward``, ``n_queries``, ``seconds``.
        seeds: the seeds used (``{"seed": 0, ...}``).
        versions: library versions (:func:`advlab._provenance.versions`).
        model_hash: the hash of the model's weights (``None`` for records of several models).
        started / finished: ISO-8601 UTC timestamps.
        artifacts: named binary files (PNG image grids, heatmaps), stored with the record.
    """

    key: str
    kind: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    cost: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    model_hash: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    artifacts: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def for_config(cls, kind: str, config: dict[str, Any], metrics: dict[str, Any], **fields: Any) -> Record:
        """A record whose ``key`` is :func:`config_hash` of ``config``; ``fields`` are the other attributes.

        Example:
            >>> r = Record.for_config("train", {"kind": "train", "seed": 0}, {"clean_accuracy": 0.9})
            >>> r.key == config_hash({"seed": 0, "kind": "train"})
            True
        """
        return cls(key=config_hash(config), kind=kind, config=config, metrics=metrics, **fields)

    def identity(self) -> dict[str, Any]:
        """The record without what differs between two runs of the same cell (timestamps, ``seconds`` and any
        ``*_seconds``): two runs of the same configuration and seed must agree on it exactly."""
        def strip(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: strip(x) for k, x in v.items() if k not in _TIMING_KEYS and not k.endswith("_seconds")}
            if isinstance(v, list):
                return [strip(x) for x in v]
            return v

        return strip({"key": self.key, "kind": self.kind, "config": self.config, "metrics": self.metrics,
                      "cost": self.cost, "seeds": self.seeds, "versions": self.versions,
                      "model_hash": self.model_hash, "checks": self.checks,
                      "artifacts": sorted(self.artifacts)})


_TIMING_KEYS = frozenset({"seconds", "started", "finished", "examples_per_second", "wall_seconds"})
