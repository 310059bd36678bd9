"""The results store over one SQLite file (stdlib :mod:`sqlite3`: no server, nothing to install).

Layout (schema version :data:`SCHEMA_VERSION`):

* ``meta(name, value)``: ``schema_version``, ``created`` (ISO-8601 UTC) and ``advlab_version`` (the advlab
  that created the file). A file without this table is not an advlab store and is never touched.
* ``records``: one row per :class:`Record`, keyed by :func:`config_hash` of its configuration; the JSON
  fields are stored as strict JSON text (no NaN/inf).
* ``artifacts(key, name, bytes)``: the record's binary files (PNG grids, heatmaps), primary key
  ``(key, name)``, a foreign key to ``records``.

Why the rollback journal and not WAL: with the default rollback journal the store is exactly one
self-contained file whenever no write is in progress (the ``-journal`` beside it lives only for the length of
a transaction), so it can be copied, mailed, attached to a paper or opened read-only from a read-only
directory. WAL keeps ``-wal`` and ``-shm`` files beside it while it is open (and after a crash): copying the
``.sqlite`` alone then loses committed records, read-only opens need write access to ``-shm``, and WAL does
not work on network file systems. What WAL would buy (readers never wait for the writer) matters little here:
a record is written once per computed cell, each write is one short transaction, and a reader that arrives
during a commit waits (``PRAGMA busy_timeout``) instead of failing.

Atomicity: ``put`` writes a record and all its artifacts in one transaction (``BEGIN IMMEDIATE`` ...
``COMMIT``, ``synchronous=FULL``). A process killed at any moment (even by ``SIGKILL``) leaves a hot journal
that SQLite rolls back at the next read-write open: the store then holds the old content, never half a record.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from advlab.store._record import RECORD_KINDS, Record, canonical_json, config_hash, now_iso, parse_iso

__all__ = ["SCHEMA_VERSION", "NewerSchemaError", "ResultStore", "StoreError"]

SCHEMA_VERSION = 1
"""The version of the store's tables that this advlab writes and reads."""

DEFAULT_TIMEOUT = 60.0
"""Seconds a store waits for another process's write to finish before it gives up (``PRAGMA busy_timeout``)."""

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    """CREATE TABLE records (
        key TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,
        metrics TEXT NOT NULL,
        cost TEXT NOT NULL,
        seeds TEXT NOT NULL,
        versions TEXT NOT NULL,
        model_hash TEXT,
        checks TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT NOT NULL
    )""",
    "CREATE INDEX records_kind ON records (kind)",
    """CREATE TABLE artifacts (
        key TEXT NOT NULL REFERENCES records (key) ON DELETE CASCADE,
        name TEXT NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (key, name)
    )""",
)
_COLUMNS = ("key", "kind", "config", "metrics", "cost", "seeds", "versions", "model_hash", "checks", "started",
            "finished")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM records"

# Migration hook: _MIGRATIONS[v] upgrades a store of schema v to v + 1 inside the open transaction. Version 1 is
# the first, so none exist yet; a future schema adds its step here and bumps SCHEMA_VERSION.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEY = re.compile(r"[0-9a-f]{64}")


class StoreError(ValueError):
    """A results store cannot be opened or written: not a store, missing, read-only, busy, or a duplicate."""


class NewerSchemaError(StoreError):
    """The store was written by a newer advlab (its schema version is above :data:`SCHEMA_VERSION`)."""


def _advlab_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("advlab")
    except metadata.PackageNotFoundError:
        from advlab import __version__

        return __version__


# ---------------------------------------------------------------------------------------------------------------
# Validation and (de)serialisation of records


def _check_json(value: Any, where: str, seen: frozenset[int] = frozenset()) -> None:
    """Raises a clear error when ``value`` is not strict JSON (NaN/inf, non-string keys, other types)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(
                f"{where} is {value}; the results store holds strict JSON, which has no NaN or infinity: store "
                f"null (None) for a missing value"
            )
        return
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            raise ValueError(f"{where} contains itself; a record must be a tree of JSON values")
        inner = seen | {id(value)}
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(
                        f"{where} has the key {k!r} ({type(k).__name__}); JSON object keys are strings: use str keys"
                    )
                _check_json(v, f"{where}[{k!r}]", inner)
        else:
            for i, v in enumerate(value):
                _check_json(v, f"{where}[{i}]", inner)
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which JSON cannot hold; convert it "
        f"first (float(), int(), str(), .tolist())"
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _validate(record: Record) -> tuple[tuple[Any, ...], dict[str, bytes]]:
    """Checks ``record`` and returns its row (in ``_COLUMNS`` order) and its artifacts as bytes."""
    if not isinstance(record, Record):
        raise TypeError(f"ResultStore.put needs an advlab.store.Record, got {type(record).__name__}")
    if record.kind not in RECORD_KINDS:
        raise ValueError(f"record kind {record.kind!r} is not one of {', '.join(RECORD_KINDS)}")
    for name, want in (("config", dict), ("metrics", dict), ("cost", dict), ("seeds", dict), ("versions", dict),
                       ("checks", list)):
        value = getattr(record, name)
        if not isinstance(value, want):
            raise TypeError(f"record {name} must be a {want.__name__}, got {type(value).__name__}")
        _check_json(value, f"record {name}")
    if "kind" in record.config and record.config["kind"] != record.kind:
        raise ValueError(
            f"record kind {record.kind!r} differs from its config's kind {record.config['kind']!r}; make them agree"
        )
    expected = config_hash(record.config)
    if record.key != expected:
        raise ValueError(
            f"record key {record.key!r} is not the hash of its config ({expected}); build the record with "
            f"Record.for_config(kind, config, metrics) or key=config_hash(config)"
        )
    if record.model_hash is not None and not isinstance(record.model_hash, str):
        raise TypeError(f"record model_hash must be a string or None, got {type(record.model_hash).__name__}")
    for name in ("started", "finished"):
        stamp = getattr(record, name)
        if not isinstance(stamp, str):
            raise TypeError(f"record {name} must be an ISO-8601 string, got {type(stamp).__name__}")
        if stamp:
            try:
                parse_iso(stamp)
            except ValueError as err:
                raise ValueError(f"record {name}: {err}") from None
    if not isinstance(record.artifacts, dict):
        raise TypeError(f"record artifacts must be a dict of name -> bytes, got {type(record.artifacts).__name__}")
    artifacts: dict[str, bytes] = {}
    for name, data in record.artifacts.items():
        if not isinstance(name, str) or not _ARTIFACT_NAME.fullmatch(name):
            raise ValueError(
                f"artifact name {name!r} is not a plain file name: use letters, digits, '.', '_' and '-' (at most "
                f"128, not starting with '.'), e.g. 'grid.png'"
            )
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"artifact {name!r} must be bytes, got {type(data).__name__}")
        artifacts[name] = bytes(data)
    row = (record.key, record.kind, canonical_json(record.config), _dumps(record.metrics), _dumps(record.cost),
           _dumps(record.seeds), _dumps(record.versions), record.model_hash, _dumps(record.checks), record.started,
           record.finished)
    return row, artifacts


def _record_from_row(row: tuple[Any, ...], artifacts: dict[str, bytes]) -> Record:
    key, kind, config, metrics, cost, seeds, versions, model_hash, checks, started, finished = row
    return Record(key=key, kind=kind, config=json.loads(config), metrics=json.loads(metrics), cost=json.loads(cost),
                  seeds=json.loads(seeds), versions=json.loads(versions), model_hash=model_hash,
                  checks=json.loads(checks), started=started, finished=finished, artifacts=artifacts)


_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def _order(finished: str, key: str) -> tuple[datetime, str]:
    """Sort key: finishing time (records without one first), then key."""
    try:
        return (parse_iso(finished) if finished else _EARLIEST), key
    except (TypeError, ValueError):
        return _EARLIEST, key


# ---------------------------------------------------------------------------------------------------------------
# The store


class ResultStore:
    """Results of advlab runs, one :class:`Record` per configuration, in one SQLite file.

    Opening checks the file before anything is written: a missing file is created (unless ``create=False`` or
    ``readonly=True``), a file that is not an advlab store is refused, and a store written by a newer advlab
    raises :class:`NewerSchemaError`. One process writes at a time (each :meth:`put` is one transaction);
    readers in other processes see whole records only, and wait up to ``timeout`` seconds for a commit in
    progress instead of failing. Usable as a context manager; safe to share between threads of one process.

    Args:
        path: the store's file (by convention ``*.sqlite``).
        readonly: open with SQLite's ``mode=ro``: reads only, :meth:`put` raises :class:`StoreError`.
            Default ``False``.
        create: create the store when ``path`` does not exist. Default ``True``.
        timeout: seconds to wait for another process's write lock. Default 60.

    Raises:
        StoreError: ``path`` is missing (read-only or ``create=False``), a directory, not SQLite, an SQLite
            file without advlab's ``meta`` table, or cannot be opened.
        NewerSchemaError: the store's schema version is above :data:`SCHEMA_VERSION`.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "results.sqlite")
        >>> with ResultStore(path) as store:
        ...     (len(store), store.meta["schema_version"])
        (0, '1')
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not isinstance(readonly, bool) or not isinstance(create, bool):
            raise TypeError("readonly and create must be True or False")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < 1e6:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        self.path = Path(path)
        self.readonly = readonly
        self._create = create
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        name = repr(str(self.path))
        if self.path.is_dir():
            raise StoreError(f"{name} is a directory, not a results store file; name a file, e.g. results.sqlite")
        existed = self.path.exists()
        if not existed:
            if readonly or not create:
                raise StoreError(f"no results store at {name}; check the path (a store is created by a run that "
                                 f"writes to it)")
            if not self.path.parent.is_dir():
                raise StoreError(f"cannot create the results store {name}: the directory {str(self.path.parent)!r} "
                                 f"does not exist; create it or choose another path")
        mode = "ro" if readonly else ("rwc" if create else "rw")
        try:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode={mode}", uri=True, timeout=self.timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the results store {name}: {err}") from err
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            self._conn = conn
            self._open(created=not existed)
        except BaseException as err:
            conn.close()
            self._conn = None
            if not existed and self.path.exists() and self.path.stat().st_size == 0:
                self.path.unlink()  # ours, and empty: leave nothing behind
            if isinstance(err, sqlite3.DatabaseError) and "not a database" in str(err):
                raise StoreError(f"{name} is not an advlab results store (not an SQLite database); choose another "
                                 f"--store file") from err
            if isinstance(err, sqlite3.Error):
                raise self._error(err, "open") from err
            raise

    # -- opening -------------------------------------------------------------------------------------------------

    def _open(self, *, created: bool) -> None:
        conn = self._connection()
        name = repr(str(self.path))
        not_store = f"{name} is not an advlab results store"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.readonly or not self._create or not (created or self.path.stat().st_size == 0):
                raise StoreError(f"{not_store} (an empty database); open it with create=True and without readonly "
                                 f"to make it one")
            if self._initialise():
                return
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise StoreError(f"{not_store} (an SQLite database without advlab's meta table); choose another "
                             f"--store file")
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise NewerSchemaError(
                f"the results store {name} has schema version {version}, newer than this advlab's "
                f"{SCHEMA_VERSION} (advlab {_advlab_version()}); upgrade advlab to read it, or use another --store "
                f"file"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)
        missing = {"records", "artifacts"} - tables
        if missing:
            raise StoreError(f"the results store {name} is damaged: the table(s) {', '.join(sorted(missing))} are "
                             f"missing; restore it from a copy or use another --store file")

    def _schema_version(self) -> int:
        try:
            row = self._connection().execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            return int(row[0])
        except (TypeError, ValueError, sqlite3.OperationalError):
            raise StoreError(f"{str(self.path)!r} is not an advlab results store (its meta table has no valid "
                             f"schema_version); choose another --store file") from None

    def _initialise(self) -> bool:
        """Creates the tables of an empty database; ``False`` when another process filled it first (two runs
        racing to create one store: the second waits for the first's transaction, then checks its work)."""
        with self._transaction("create") as conn:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return False
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("created", now_iso()), ("advlab_version", _advlab_version()),
            ])
        return True

    def _migrate(self, version: int) -> None:
        name = repr(str(self.path))
        if any(v not in _MIGRATIONS for v in range(version, SCHEMA_VERSION)):
            raise StoreError(f"the results store {name} has schema version {version}, which this advlab "
                             f"({SCHEMA_VERSION}) cannot upgrade; use another --store file")
        if self.readonly:
            raise StoreError(f"the results store {name} has the older schema version {version}; open it once "
                             f"without readonly to upgrade it to {SCHEMA_VERSION}")
        with self._transaction("upgrade") as conn:
            current = self._schema_version()  # another process may have upgraded it meanwhile
            for v in range(current, SCHEMA_VERSION):
                _MIGRATIONS[v](conn)
            conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the results store {str(self.path)!r} is closed; open it again")
        return self._conn

    def _error(self, err: sqlite3.Error, action: str) -> StoreError:
        name = repr(str(self.path))
        text = str(err)
        if "locked" in text or "busy" in text:
            return StoreError(f"the results store {name} is busy: another process held its lock for over "
                              f"{self.timeout:g} s; try again when that run finishes")
        if "readonly" in text or "read-only" in text:
            if self.readonly:
                return StoreError(f"the results store {name} cannot be read read-only ({text}): it may hold an "
                                  f"interrupted write; open it once without readonly (that recovers it) and retry")
            return StoreError(f"cannot write the results store {name} ({text}); check the permissions of the "
                              f"file and its directory")
        return StoreError(f"cannot {action} the results store {name}: {text}")

    @contextmanager
    def _transaction(self, action: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` (write lock at once: no deadlock between two writers) or a
        deferred ``BEGIN`` for a consistent read; rolled back on any exception, including KeyboardInterrupt."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as err:
                raise self._error(err, action) from err
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as err:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise self._error(err, action) from err
                raise

    # -- writing -------------------------------------------------------------------------------------------------

    def put(self, record: Record, *, replace: bool = False) -> None:
        """Writes ``record`` and its artifacts in one transaction: all of it is stored, or (on any error, or a
        crash at any moment) none of it.

        Args:
            record: a :class:`Record` whose ``key`` is :func:`config_hash` of its ``config``, of a kind in
                ``RECORD_KINDS``, with strict-JSON fields (no NaN/inf; tuples are read back as lists).
            replace: overwrite a record already stored under the same key (its artifacts too). Default ``False``.

        Raises:
            ValueError / TypeError: the record is malformed (the message names the field).
            StoreError: the key is already stored and ``replace`` is false; the store is read-only or busy.
        """
        if not isinstance(replace, bool):
            raise TypeError("replace must be True or False")
        row, artifacts = _validate(record)
        if self.readonly:
            raise StoreError(f"the results store {str(self.path)!r} was opened read-only; open it without "
                             f"readonly=True to write")
        with self._transaction("write to") as conn:
            if conn.execute("SELECT 1 FROM records WHERE key = ?", (record.key,)).fetchone():
                if not replace:
                    raise StoreError(
                        f"a {record.kind} record with key {record.key} is already in the store "
                        f"{str(self.path)!r}; the same cell is never computed twice (pass replace=True to overwrite)"
                    )
                conn.execute("DELETE FROM artifacts WHERE key = ?", (record.key,))
                conn.execute("DELETE FROM records WHERE key = ?", (record.key,))
            conn.execute(f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                         row)
            conn.executemany("INSERT INTO artifacts (key, name, bytes) VALUES (?, ?, ?)",
                             [(record.key, name, data) for name, data in artifacts.items()])

    # -- reading -------------------------------------------------------------------------------------------------

    def _artifacts(self, conn: sqlite3.Connection, key: str | None) -> dict[str, dict[str, bytes]]:
        query = "SELECT key, name, bytes FROM artifacts" + (" WHERE key = ?" if key is not None else "")
        out: dict[str, dict[str, bytes]] = {}
        for k, name, data in conn.execute(query + " ORDER BY key, name", () if key is None else (key,)):
            out.setdefault(k, {})[name] = bytes(data)
        return out

    def _missing(self, key: object) -> KeyError:
        return KeyError(f"no record with key {key!r} in the results store {str(self.path)!r}; list the stored "
                        f"keys with ResultStore.keys()")

    def get(self, key: str) -> Record:
        """The record stored under ``key`` (with its artifacts); ``KeyError`` naming the key if absent."""
        if not isinstance(key, str):
            raise TypeError(f"a record key is a string (a config hash), got {type(key).__name__}")
        with self._transaction("read", write=False) as conn:
            row = conn.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise self._missing(key)
            artifacts = self._artifacts(conn, key).get(key, {})
        return _record_from_row(row, artifacts)

    def artifacts(self, key: str) -> dict[str, bytes]:
        """The artifacts of the record under ``key`` (name -> bytes, by name); ``KeyError`` if absent."""
        if not isinstance(key, str):
            raise TypeError(f"a record key is a string (a config hash), got {type(key).__name__}")
        with self._transaction("read", write=False) as conn:
            if conn.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone() is None:
                raise self._missing(key)
            return self._artifacts(conn, key).get(key, {})

    def records(self, kind: str | None = None, *, with_artifacts: bool = True) -> list[Record]:
        """All records (of ``kind`` if given), ordered by finishing time, then key (deterministic).

        Args:
            kind: one of ``RECORD_KINDS``, or ``None`` for all. Default ``None``.
            with_artifacts: load the artifacts' bytes too. Default ``True``.
        """
        if kind is not None and kind not in RECORD_KINDS:
            raise ValueError(f"record kind {kind!r} is not one of {', '.join(RECORD_KINDS)}")
        with self._transaction("read", write=False) as conn:
            if kind is None:
                rows = conn.execute(_SELECT).fetchall()
            else:
                rows = conn.execute(f"{_SELECT} WHERE kind = ?", (kind,)).fetchall()
            artifacts = self._artifacts(conn, None) if with_artifacts and rows else {}
        rows.sort(key=lambda r: _order(r[10], r[0]))
        return [_record_from_row(r, artifacts.get(r[0], {})) for r in rows]

    def keys(self) -> list[str]:
        """The stored keys, in the order of :meth:`records`."""
        with self._lock:
            try:
                rows = self._connection().execute("SELECT key, finished FROM records").fetchall()
            except sqlite3.Error as err:
                raise self._error(err, "read") from err
        return [k for k, _ in sorted(rows, key=lambda r: _order(r[1], r[0]))]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            try:
                return self._connection().execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone() is not None
            except sqlite3.Error as err:
                raise self._error(err, "read") from err

    def __len__(self) -> int:
        with self._lock:
            try:
                return int(self._connection().execute("SELECT count(*) FROM records").fetchone()[0])
            except sqlite3.Error as err:
                raise self._error(err, "read") from err

    @property
    def meta(self) -> dict[str, str]:
        """The store's ``meta`` table: ``schema_version``, ``created``, ``advlab_version``."""
        with self._lock:
            try:
                return dict(self._connection().execute("SELECT name, value FROM meta ORDER BY name").fetchall())
            except sqlite3.Error as err:
                raise self._error(err, "read") from err

    # -- lifetime ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the file (idempotent); later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}{', readonly=True' if self.readonly else ''})"
