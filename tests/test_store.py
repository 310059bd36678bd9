"""The results store: round trips, validation, duplicates, ordering, schema versions, foreign files, read-only
opens, a reader during a write, atomicity under SIGKILL, and the properties of the config hash."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advlab.store import (
    RECORD_KINDS,
    SCHEMA_VERSION,
    NewerSchemaError,
    Record,
    ResultStore,
    StoreError,
    _sqlite,
    canonical_json,
    config_hash,
    now_iso,
    parse_iso,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(i: int = 0, kind: str = "attack", finished: str = "2024-05-01T12:00:00+00:00", **fields: Any) -> Record:
    config = {"kind": kind, "dataset": "digits", "model": {"name": "mlp", "defense": None}, "seed": i,
              "attack": "pgd", "norm": "linf", "eps": [0.1, 0.2], "n": 64}
    return Record.for_config(kind, config, {"results": [{"eps": 0.1, "robust_accuracy": 0.5}]},
                             finished=finished, **fields)


def full_record() -> Record:
    config = {"kind": "robustness", "dataset": "digits", "model": {"name": "cnn-small", "checkpoint": "runs/a",
              "defense": {"name": "pgd-at", "eps": 0.1}}, "seed": 7, "suite": "standard", "norm": "linf",
              "eps": [0.05, 0.1, 0.2], "n": 128, "unicode": "εδ ✓", "flags": [True, False, None], "big": 2**70}
    metrics = {"clean_accuracy": 0.9765625, "robust_accuracy": [0.7, 0.41, 0.0], "distances": [[0.1, None]],
               "attack_names": ["APGD-CE", "APGD-T", "Square"], "nested": {"a": {"b": [1, 2.5, -3e-12]}}}
    return Record.for_config(
        "robustness", config, metrics,
        cost={"n_forward": 12345, "n_backward": 6789, "n_queries": 5000, "seconds": 1.25},
        seeds={"seed": 7, "torch": 123},
        versions={"advlab": "0.1.0", "torch": "2.13.0", "numpy": "2.0", "python": "3.11"},
        model_hash="ab" * 32,
        checks=[{"name": "single-step", "status": "pass", "message": "ok", "details": {"n": 3}},
                {"name": "active-test", "status": "fail", "message": "no", "adaptive": ["bpda"]}],
        started="2024-05-01T12:00:00.000001+00:00", finished="2024-05-01T12:03:00.5+00:00",
        artifacts={"grid.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10, "empty.bin": b"",
                   "heat-map_2.png": bytearray(b"\x00\xff")},
    )


# --------------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    record = full_record()
    with ResultStore(path) as store:
        store.put(record)
        assert record.key in store and len(store) == 1 and store.keys() == [record.key]
        assert store.get(record.key) == record
    with ResultStore(path, readonly=True) as store:  # a fresh connection reads the file, not a cache
        back = store.get(record.key)
        assert back == record
        for name in ("key", "kind", "config", "metrics", "cost", "seeds", "versions", "model_hash", "checks",
                     "started", "finished", "artifacts"):
            assert getattr(back, name) == getattr(record, name), name
        assert back.artifacts == {"empty.bin": b"", "grid.png": record.artifacts["grid.png"],
                                  "heat-map_2.png": b"\x00\xff"}
        assert all(type(v) is bytes for v in back.artifacts.values())
        assert back.config["big"] == 2**70 and back.metrics["nested"]["a"]["b"][2] == -3e-12
        assert store.artifacts(record.key) == back.artifacts
        assert store.records() == [record] and store.records("robustness") == [record]
        assert store.records("attack") == []
        assert store.records(with_artifacts=False)[0].artifacts == {}
        assert back.identity() == record.identity()


def test_tuples_read_back_as_lists_and_key_is_unchanged(tmp_path: Path) -> None:
    config = {"kind": "train", "eps": (0.1, 0.2)}
    record = Record.for_config("train", config, {"shape": (1, 8, 8)})
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record)
        back = store.get(record.key)
    assert back.config == {"kind": "train", "eps": [0.1, 0.2]} and back.metrics == {"shape": [1, 8, 8]}
    assert config_hash(back.config) == back.key == record.key


def test_meta_table_and_new_store(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    before = parse_iso(now_iso())
    with ResultStore(path) as store:
        meta = store.meta
    assert meta["schema_version"] == str(SCHEMA_VERSION) == "1"
    assert meta["advlab_version"]
    assert before <= parse_iso(meta["created"]) <= parse_iso(now_iso())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.sqlite"]  # one file at rest, no -wal/-shm
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"meta", "records", "artifacts"}


def test_closed_store_and_repr(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    assert "r.sqlite" in repr(store)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        len(store)


def test_missing_key(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(KeyError, match="no record with key 'nope'"):
            store.get("nope")
        with pytest.raises(KeyError, match="no record"):
            store.artifacts("nope")
        assert "nope" not in store and 3 not in store


# --------------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"key": "0" * 64}, ValueError, "not the hash of its config"),
    ({"kind": "robustnes"}, ValueError, "not one of robustness, attack"),
    ({"metrics": {"a": [1.0, math.nan]}}, ValueError, r"record metrics\['a'\]\[1\] is nan.*strict JSON"),
    ({"cost": {"seconds": math.inf}}, ValueError, r"record cost\['seconds'\] is inf"),
    ({"metrics": {1: 2}}, TypeError, "key 1 .*strings"),
    ({"metrics": {"x": object()}}, TypeError, r"record metrics\['x'\] is a builtins.object.*convert"),
    ({"checks": {"a": 1}}, TypeError, "checks must be a list"),
    ({"model_hash": 3}, TypeError, "model_hash"),
    ({"finished": "yesterday"}, ValueError, "record finished: timestamp 'yesterday' is not ISO-8601"),
    ({"artifacts": {"../x.png": b""}}, ValueError, "not a plain file name"),
    ({"artifacts": {"a.png": "text"}}, TypeError, "must be bytes"),
])
def test_invalid_records_are_refused_and_nothing_is_written(tmp_path: Path, change: dict[str, Any],
                                                            error: type[Exception], match: str) -> None:
    record = make()
    for name, value in change.items():
        setattr(record, name, value)
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(error, match=match):
            store.put(record)
        assert len(store) == 0


def test_config_nan_and_kind_mismatch_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finite"):
        Record.for_config("attack", {"kind": "attack", "eps": [math.nan]}, {})
    record = make(kind="attack")
    record.kind = "train"
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="differs from its config"):
        store.put(record)
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(TypeError, match=r"needs an advlab.store.Record"):
        store.put({"key": "x"})  # type: ignore[arg-type]


def test_canonical_json_refuses_nan_and_inf() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            canonical_json({"a": {"b": [1, bad]}})
        with pytest.raises(ValueError):
            config_hash({"eps": bad})
    assert canonical_json({"b": 1, "a": [1.5, None, True]}) == '{"a":[1.5,null,true],"b":1}'


# --------------------------------------------------------------------------------------------------------------
# Duplicates, replace, ordering


def test_duplicates_refused_and_replace_overwrites_with_artifacts(tmp_path: Path) -> None:
    first = make(artifacts={"grid.png": b"old", "extra.png": b"x"})
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(first)
        second = make(artifacts={"grid.png": b"new"})
        second.metrics = {"results": []}
        with pytest.raises(StoreError, match=r"already in the store.*never computed twice.*replace=True"):
            store.put(second)
        assert store.get(first.key) == first  # untouched
        store.put(second, replace=True)
        assert len(store) == 1
        assert store.get(first.key) == second
        assert store.artifacts(first.key) == {"grid.png": b"new"}  # the old artifacts went with the old record
        count = store._connection().execute("SELECT count(*) FROM artifacts").fetchone()[0]
        assert count == 1


def test_replace_of_a_missing_key_is_a_plain_put(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(make(), replace=True)
        assert len(store) == 1


def test_order_is_by_finishing_time_then_key_whatever_the_insertion_order(tmp_path: Path) -> None:
    stamps = ["2024-05-01T12:00:00+00:00", "2024-05-01T11:00:00Z", "2024-05-01T13:30:00+02:00",  # = 11:30 UTC
              "2024-05-01T12:00:00+00:00", "", "2024-05-02T00:00:00+00:00"]
    records = [make(i, kind=("attack" if i % 2 else "train"), finished=t) for i, t in enumerate(stamps)]
    expected = sorted(records, key=lambda r: (parse_iso(r.finished).timestamp() if r.finished else -math.inf, r.key))
    assert [r.finished for r in expected][:4] == ["", "2024-05-01T11:00:00Z", "2024-05-01T13:30:00+02:00",
                                                  "2024-05-01T12:00:00+00:00"]
    seen = []
    for n, order in enumerate((records, records[::-1], records[2:] + records[:2])):
        with ResultStore(tmp_path / f"r{n}.sqlite") as store:
            for r in order:
                store.put(r)
            seen.append(([r.key for r in store.records()], store.keys(), [r.key for r in store.records("train")]))
    want = [r.key for r in expected]
    assert all(s == (want, want, [r.key for r in expected if r.kind == "train"]) for s in seen)
    with ResultStore(tmp_path / "r0.sqlite") as store, pytest.raises(ValueError, match="not one of"):
        store.records("robust")


# --------------------------------------------------------------------------------------------------------------
# Opening: schema versions, foreign files, read-only


def _set_schema_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))
    conn.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_before_anything_is_written(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "future.sqlite"
    with ResultStore(path) as store:
        store.put(make())
    _set_schema_version(path, SCHEMA_VERSION + 1)
    before = sha256(path)
    with pytest.raises(NewerSchemaError) as info:
        ResultStore(path, readonly=readonly)
    message = str(info.value)
    assert str(path) in message and f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"this advlab's {SCHEMA_VERSION}" in message
    assert "upgrade advlab" in message and "another --store file" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, StoreError)
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.sqlite"]


def test_older_schema_goes_through_the_migration_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.sqlite"
    record = make()
    with ResultStore(path) as store:
        store.put(record)
    _set_schema_version(path, 0)
    with pytest.raises(StoreError, match=r"schema version 0, which this advlab .* cannot upgrade"):
        ResultStore(path)
    _set_schema_version(path, 1)
    # A hypothetical schema 2 that adds a column: the hook runs once, in a transaction, and bumps the version.
    calls = []

    def to_v2(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE records ADD COLUMN note TEXT")

    monkeypatch.setattr(_sqlite, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(_sqlite._MIGRATIONS, 1, to_v2)
    with pytest.raises(StoreError, match="older schema version 1; open it once without readonly"):
        ResultStore(path, readonly=True)
    with ResultStore(path) as store:
        assert store.meta["schema_version"] == "2" and store.get(record.key) == record
    with ResultStore(path) as store:
        assert len(store) == 1
    assert calls == [1]


def test_non_store_files_are_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a database\n" * 20)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 64)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ada')")
    conn.close()
    meta = tmp_path / "meta.sqlite"  # another program's table named meta
    conn = sqlite3.connect(meta)
    with conn:
        conn.execute("CREATE TABLE meta (k TEXT, v TEXT)")
    conn.close()
    for path in (text, noise, other, meta):
        before = sha256(path)
        for readonly in (False, True):
            with pytest.raises(StoreError, match="is not an advlab results store") as info:
                ResultStore(path, readonly=readonly)
            assert repr(str(path)) in str(info.value)
        assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.sqlite", "noise.bin", "notes.txt", "other.sqlite"]
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    with pytest.raises(StoreError, match=r"no results store at '.*none\.sqlite'"):
        ResultStore(path, readonly=True)
    with pytest.raises(StoreError, match="no results store at"):
        ResultStore(path, create=False)
    with pytest.raises(StoreError, match=r"directory .* does not exist"):
        ResultStore(tmp_path / "sub" / "r.sqlite")
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty database"):
        ResultStore(empty, readonly=True)
    with ResultStore(empty) as store:  # an empty file is an empty database: it becomes a store
        assert len(store) == 0


def test_readonly_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(make(0))
    before = sha256(path)
    with ResultStore(path, readonly=True) as store:
        with pytest.raises(StoreError, match="opened read-only; open it without readonly=True to write"):
            store.put(make(1))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # not even behind the API's back
            store._connection().execute("DELETE FROM records")
        assert len(store) == 1
    assert sha256(path) == before


def test_two_processes_creating_one_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            with ResultStore(path) as store:
                len(store)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ResultStore(path) as store:
        assert store.meta["schema_version"] == "1"


# --------------------------------------------------------------------------------------------------------------
# Concurrency


def test_reader_waits_for_a_writer_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    record = make()
    with ResultStore(path) as store:
        store.put(record)
    # Another process's writer in the middle of a commit holds the exclusive lock: nobody may read.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("DELETE FROM artifacts")
    release = threading.Timer(0.5, lambda: writer.execute("ROLLBACK"))
    start = time.monotonic()
    release.start()
    try:
        with ResultStore(path, readonly=True) as reader:  # opening reads the meta table: it waits too
            got = reader.get(record.key)
        waited = time.monotonic() - start
    finally:
        release.join()
    assert got == record
    assert waited >= 0.4
    # With a short timeout the wait ends in a clear error instead.
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=r"is busy: another process held its lock for over 0.2 s"):
            ResultStore(path, readonly=True, timeout=0.2)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_reader_sees_only_committed_records_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.put(make(0, artifacts={"a.png": b"1"}))
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM artifacts")
        writer.execute("DELETE FROM records")
        with ResultStore(path, readonly=True, timeout=0.5) as reader:
            start = time.monotonic()
            assert len(reader) == 1 and reader.records()[0].artifacts == {"a.png": b"1"}
            assert time.monotonic() - start < 0.4  # a reserved (not yet committing) writer does not block reads
        with pytest.raises(StoreError, match="busy"):  # a second writer waits, then gives up clearly
            ResultStore(path, timeout=0.2).put(make(1))
        writer.execute("ROLLBACK")
        writer.close()
        store.put(make(1))
        assert len(store) == 2


def test_readers_during_writes_see_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    done = threading.Event()
    problems: list[str] = []
    reads = [0]

    def write() -> None:
        with ResultStore(path) as store:
            for i in range(12):
                blobs = {f"a{j}.bin": os.urandom(300_000) for j in range(3)}
                store.put(_hashed(i, blobs))
        done.set()

    def read() -> None:
        with ResultStore(path, readonly=True) as store:
            while not done.is_set():
                for r in store.records():
                    if _hashes(r.artifacts) != r.metrics["sha256"]:
                        problems.append(r.key)
                reads[0] += 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == [] and reads[0] > 0
    assert len(ResultStore(path, readonly=True)) == 12


def _hashes(artifacts: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in artifacts.items()}


def _hashed(i: int, blobs: dict[str, bytes]) -> Record:
    return Record.for_config("train", {"kind": "train", "i": i}, {"sha256": _hashes(blobs)}, artifacts=blobs,
                             finished=now_iso())


# --------------------------------------------------------------------------------------------------------------
# Atomicity under SIGKILL

_WRITER = r"""
import hashlib, os, sys
from advlab.store import Record, ResultStore, now_iso
store = ResultStore(sys.argv[1])
for i in range(int(sys.argv[2]), 10_000):
    blobs = {f"part{j}.bin": os.urandom(3_000_000) for j in range(3)}
    sha = {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}
    store.put(Record.for_config("train", {"kind": "train", "i": i}, {"sha256": sha}, artifacts=blobs,
                                finished=now_iso()))
    print(i, flush=True)
"""


def _kill_mid_put(path: Path, first: int) -> tuple[list[int], bool]:
    """Starts a writer putting records ``first, first+1, ...`` (9 MB of artifacts each) and SIGKILLs it while
    a put has already written into the database file; returns the indices it reported done and whether a
    hot journal was left (that is, the kill hit the middle of a transaction)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(first)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # one record committed
        assert line.strip() == str(first), line
        size = path.stat().st_size
        journal = Path(f"{path}-journal")
        deadline = time.monotonic() + 20
        # The next put has spilled pages into the database file itself: the most fragile moment.
        while not (journal.exists() and path.stat().st_size > size + 1_000_000) and time.monotonic() < deadline:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hot = journal.exists()
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return [int(x) for x in (line + rest).split()], hot


def test_sigkill_in_the_middle_of_a_put_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    done: list[int] = []
    caught = 0
    for _ in range(4):
        reported, hot = _kill_mid_put(path, len(done))
        done += reported
        if hot:
            caught += 1
            # The interrupted write cannot be undone by a read-only open: a clear error, nothing read wrong.
            with pytest.raises(StoreError, match="interrupted write; open it once without readonly"):
                ResultStore(path, readonly=True)
            if caught == 1:  # the report recovers such a store by itself (one read-write open) and reads it
                from advlab.report import load_records

                assert [r.config["i"] for r in load_records(path)] == done
                assert not Path(f"{path}-journal").exists()
        with ResultStore(path) as store:  # the read-write open rolls the hot journal back
            assert store._connection().execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            records = store.records()
        assert not Path(f"{path}-journal").exists()
        assert [r.config["i"] for r in records] == done == list(range(len(done)))
        for r in records:
            assert sorted(r.artifacts) == ["part0.bin", "part1.bin", "part2.bin"]
            assert _hashes(r.artifacts) == r.metrics["sha256"]
        if caught >= 2:
            break
    assert caught >= 1, "the writer was never killed in the middle of a transaction"
    with ResultStore(path) as store:  # the store goes on working
        store.put(_hashed(len(done), {"x.bin": b"x"}))
        assert len(store) == len(done) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]


# --------------------------------------------------------------------------------------------------------------
# Properties

_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=8) | st.floats(
    allow_nan=False, allow_infinity=False)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)
_configs = st.dictionaries(st.text(max_size=6), _json, max_size=6)


def _reorder(value: Any) -> Any:
    """The same JSON value with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


@settings(max_examples=60, deadline=None)
@given(_configs)
def test_config_hash_is_invariant_under_key_order(config: dict[str, Any]) -> None:
    shuffled = _reorder(config)
    assert config_hash(shuffled) == config_hash(config)
    assert canonical_json(shuffled) == canonical_json(config)
    assert len(config_hash(config)) == 64
    assert json.loads(canonical_json(config)) == config  # nothing lost


@settings(max_examples=60, deadline=None)
@given(_configs, _configs)
def test_config_hash_tells_different_configs_apart(a: dict[str, Any], b: dict[str, Any]) -> None:
    same_json = canonical_json(a) == canonical_json(b)
    assert (config_hash(a) == config_hash(b)) == same_json
    if not same_json:
        assert json.loads(canonical_json(a)) != json.loads(canonical_json(b)) or a != b


def test_config_hash_distinguishes_types_and_values() -> None:
    base = {"kind": "attack", "eps": [0.1], "seed": 0}
    variants = [base, {**base, "seed": 1}, {**base, "seed": 0.0}, {**base, "seed": False}, {**base, "seed": "0"},
                {**base, "eps": [0.1, 0.2]}, {**base, "eps": 0.1}, {**base, "extra": None}]
    assert len({config_hash(v) for v in variants}) == len(variants)


@settings(max_examples=25, deadline=None)
@given(_configs, st.sampled_from(RECORD_KINDS), st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True), st.binary(max_size=64), max_size=3))
def test_any_strict_json_record_round_trips(tmp_path_factory: pytest.TempPathFactory, config: dict[str, Any],
                                            kind: str, artifacts: dict[str, bytes]) -> None:
    config = {**config, "kind": kind}
    record = Record.for_config(kind, config, {"m": config}, artifacts=artifacts, finished=now_iso())
    with ResultStore(tmp_path_factory.mktemp("p") / "r.sqlite") as store:
        store.put(record)
        assert store.get(record.key) == record
