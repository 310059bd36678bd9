"""The results store: every computed cell kept as a :class:`Record` in one SQLite file.

A record holds what was run (its full ``config``, keyed by :func:`config_hash`), on which model
(``model_hash``), with which ``seeds`` and library ``versions``, what came out (``metrics``, the self-checks'
verdicts, binary ``artifacts`` such as PNG image grids) and what it cost, with ISO-8601 UTC timestamps.
:class:`ResultStore` keeps them in one SQLite file (stdlib ``sqlite3``: no server, no extra install), one
record per configuration: a cell is never computed twice, and each write is atomic (one transaction), so a
sweep killed at any moment loses no finished cell and leaves no half-written one.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "results.sqlite")
    >>> config = {"kind": "train", "dataset": "digits", "model": {"name": "mlp"}, "seed": 0}
    >>> record = Record.for_config("train", config, {"clean_accuracy": 0.97, "checkpoint": "runs/mlp",
    ...                            "defense": None, "epochs": 5}, finished=now_iso(), artifacts={"a.png": b"..."})
    >>> with ResultStore(path) as store:
    ...     store.put(record)
    ...     (len(store), record.key in store, store.keys() == [record.key])
    (1, True, True)
    >>> with ResultStore(path, readonly=True) as store:
    ...     back = store.get(record.key)
    >>> back == record, back.metrics["clean_accuracy"], back.artifacts
    (True, 0.97, {'a.png': b'...'})
"""

from advlab.store._record import RECORD_KINDS, Record, canonical_json, config_hash, now_iso, parse_iso
from advlab.store._sqlite import SCHEMA_VERSION, NewerSchemaError, ResultStore, StoreError

__all__ = [
    "RECORD_KINDS",
    "SCHEMA_VERSION",
    "NewerSchemaError",
    "Record",
    "ResultStore",
    "StoreError",
    "canonical_json",
    "config_hash",
    "now_iso",
    "parse_iso",
]
