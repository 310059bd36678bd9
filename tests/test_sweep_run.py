"""Running sweeps: records written as cells finish, never a cell computed twice (also across a SIGKILL and a
restart), and the same records (``Record.identity()``) from two runs, on local processes and on Ray.

One tiny spec on the bundled digits (two models trained for one epoch, FGSM and PGD, a worst-case suite on
one model), 50 test points."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from advlab.store import Record, ResultStore, StoreError
from advlab.sweep import checkpoint_dir, default_workdir, load_spec, run_cell, run_sweep

SPEC = """\
[sweep]
name = "tiny"
seed = 1
n = 50
batch_size = 64

[[dataset]]
name = "digits"

[[model]]
name = "softmax"
architecture = "softmax"
recipe = { epochs = 1 }

[[model]]
name = "mlp"
architecture = "mlp"
recipe = { epochs = 1 }

[[evaluation]]
attack = "fgsm"
eps = [0.05, 0.2]

[[evaluation]]
attack = "pgd"
eps = [0.1]
[evaluation.params]
steps = 5
"""

SUITE = """
[[evaluation]]
suite = "quick"
eps = [0.05, 0.2]
models = ["softmax"]
"""

# `advlab bench` with the command registered, whether or not the installed entry point has it yet.
BENCH = ("from advlab.cli.main import cli, main; from advlab.cli.bench_cmd import COMMANDS; "
         "[cli.add_command(c) for c in COMMANDS]; main()")


def _has_suites() -> bool:
    import importlib.util

    try:
        from advlab.evaluate._suites import list_suites

        return "quick" in list_suites() and importlib.util.find_spec("advlab.evaluate._robustness") is not None
    except ImportError:
        return False


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "bench.toml"
    path.write_text(SPEC + (SUITE if _has_suites() else ""))
    return path


@pytest.fixture(scope="module")
def first(spec_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, Record]]:
    """The sweep run once, on the local executor, into a fresh store."""
    store = tmp_path_factory.mktemp("first") / "results.sqlite"
    summary = run_sweep(load_spec(spec_path), store, executor="local", workers=1, progress=False)
    return store, summary, records(store)


def records(store: Path) -> dict[str, Record]:
    with ResultStore(store, readonly=True) as db:
        return {r.key: r for r in db.records()}


def identities(recs: dict[str, Record]) -> dict[str, dict[str, Any]]:
    return {k: r.identity() for k, r in recs.items()}


def test_first_run_writes_every_record(first: tuple[Path, Any, dict[str, Record]], spec_path: Path) -> None:
    store, summary, recs = first
    cells = load_spec(spec_path).cells()
    assert (summary.total, summary.before, summary.run, summary.failed, summary.skipped) == (len(cells), 0,
                                                                                            len(cells), 0, 0)
    assert sorted(recs) == sorted(c.key for c in cells) == sorted(summary.keys_run)
    workdir = default_workdir(store)
    for cell in cells:
        rec = recs[cell.key]
        assert rec.kind == cell.kind and rec.config == cell.config and rec.seeds == {"seed": 1}
        assert rec.started <= rec.finished and rec.versions["torch"]
        if cell.kind == "train":
            assert rec.metrics["checkpoint"] == f"checkpoints/{cell.key[:16]}"
            assert (workdir / rec.metrics["checkpoint"] / "model.json").is_file()
            assert 0.3 < rec.metrics["clean_accuracy"] <= 1.0 and rec.metrics["epochs"] == 1
            assert rec.model_hash is not None and len(rec.model_hash) == 64
            continue
        train = recs[cell.dependencies[0]]
        assert rec.model_hash == train.model_hash  # evaluated the model its train cell saved
        assert rec.artifacts["grid.png"].startswith(b"\x89PNG")
        if cell.kind == "attack":
            rows = rec.metrics["results"]
            assert [r["eps"] for r in rows] == cell.config["eps"]
            assert rec.metrics["n"] == 50 and rec.cost["n_backward"] > 0
            accs = [r["robust_accuracy"] for r in rows]
            assert accs == sorted(accs, reverse=True) and accs[-1] < rec.metrics["clean_accuracy"]
        else:
            assert rec.kind == "robustness" and rec.metrics["n"] == 50
            assert rec.metrics["eps"] == [0.05, 0.2] and "checks" not in rec.metrics
            assert rec.checks and {"name", "status"} <= set(rec.checks[0])
            acc = rec.metrics["robust_accuracy"]
            assert acc[0] >= acc[1] and acc[1] < rec.metrics["clean_accuracy"]


def test_never_recompute(first: tuple[Path, Any, dict[str, Record]], spec_path: Path, tmp_path: Path) -> None:
    store, summary, recs = first
    copy = tmp_path / "copy.sqlite"
    shutil.copy(store, copy)
    shutil.copytree(default_workdir(store), default_workdir(copy))
    again = run_sweep(load_spec(spec_path), copy, progress=False)
    assert (again.before, again.run, again.failed, again.keys_run) == (summary.total, 0, 0, [])
    assert records(copy) == recs  # untouched, timestamps included
    # one more evaluation: only its cells are computed, the trained models are reused
    grown = tmp_path / "grown.toml"
    grown.write_text(spec_path.read_text() + '\n[[evaluation]]\nattack = "fgm"\nnorm = "l2"\neps = [0.5]\n')
    more = run_sweep(load_spec(grown), copy, progress=False)
    assert (more.before, more.run, more.failed) == (summary.total, 2, 0)
    after = records(copy)
    assert {after[k].kind for k in more.keys_run} == {"attack"}
    assert all(after[k] == r for k, r in recs.items())


def test_run_cell_is_a_pure_function(first: tuple[Path, Any, dict[str, Record]], spec_path: Path) -> None:
    """The same cell computed in this process equals the record the sweep's worker process stored."""
    store, _, recs = first
    cell = next(c for c in load_spec(spec_path).cells() if c.kind == "attack")
    again = run_cell(cell.config, workdir=default_workdir(store))
    assert again.key == cell.key and again.identity() == recs[cell.key].identity()


def test_missing_checkpoint_is_a_clear_error(spec_path: Path, tmp_path: Path) -> None:
    cell = next(c for c in load_spec(spec_path).cells() if c.kind == "attack")
    with pytest.raises(FileNotFoundError, match=r"checkpoint of model 'softmax'.*missing.*remove that train record"):
        run_cell(cell.config, workdir=tmp_path)
    assert checkpoint_dir(tmp_path, cell.dependencies[0]) == tmp_path / "checkpoints" / cell.dependencies[0][:16]


def _bench(*args: object) -> list[str]:
    return [sys.executable, "-c", BENCH, "bench", *map(str, args), "--no-progress", "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "ADVLAB_DEFAULT_MALLOC": "1"}


def _counts(out: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) done before, (\d+) run now, (\d+) failed", out)
    assert m is not None, out
    return int(m[1]), int(m[2]), int(m[3])


def test_kill_and_resume(first: tuple[Path, Any, dict[str, Record]], spec_path: Path, tmp_path: Path) -> None:
    """SIGKILL the command once a record is committed: the restart keeps the finished records untouched,
    computes only the others, and the store ends up with the same records as an uninterrupted run."""
    _, summary, reference = first
    total = summary.total
    store = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(_bench(spec_path, "--store", store), start_new_session=True, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    with ResultStore(store, readonly=True) as db:
                        committed = len(db)
                except StoreError:
                    committed = 0
                if committed >= 1:
                    break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = records(store)
    assert 1 <= len(before) < total, f"{len(before)} of {total} records at the kill"

    out = subprocess.run(_bench(spec_path, "--store", store), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert _counts(out.stdout) == (len(before), total - len(before), 0)
    after = records(store)
    assert sorted(after) == sorted(reference)
    assert all(after[k] == r for k, r in before.items())  # untouched: same timestamps, same everything
    # and two separate local runs (one of them interrupted) agree on every record
    assert identities(after) == identities(reference)


def test_identical_records_on_ray(first: tuple[Path, Any, dict[str, Record]], spec_path: Path,
                                  tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'advlab[ray]'); the ray executor is optional")
    _, summary, reference = first
    store = tmp_path / "ray.sqlite"
    result = run_sweep(load_spec(spec_path), store, executor="ray", workers=2, progress=False)
    assert (result.run, result.failed) == (summary.total, 0), result.failures
    assert identities(records(store)) == identities(reference)


# ---------------------------------------------------------------------------------------------- the command


def _cli(*args: object) -> Any:
    from advlab.cli.bench_cmd import COMMANDS
    from advlab.cli.main import cli

    for command in COMMANDS:
        cli.add_command(command)
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result: Any) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("advlab: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_spec_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('architecture = "mlp"', 'architecture = "mlp"\ndefense = "fastat"\ndefense_eps = 0.1'))
    result = _cli("bench", bad, "--store", tmp_path / "s.sqlite", "--device", "cpu")
    assert result.exit_code == 1
    line = error_line(result)
    number = SPEC.splitlines().index('architecture = "mlp"') + 2  # the line after it, 1-based
    assert f"bad.toml:{number}: model[1].defense:" in line
    assert "fast-at" in line and "Traceback" not in result.output
    assert not (tmp_path / "s.sqlite").exists()  # checked before anything is written


def test_cli_ray_missing(tmp_path: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = _cli("bench", spec_path, "--store", tmp_path / "s.sqlite", "--executor", "ray")
    assert result.exit_code == 1
    assert "pip install 'advlab[ray]'" in error_line(result)
    with pytest.raises(ImportError, match=r"pip install 'advlab\[ray\]'"):
        run_sweep(load_spec(spec_path), tmp_path / "s2.sqlite", executor="ray")


def test_cli_failed_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A train cell that fails (a budget larger than the inputs' range) fails alone; the cells needing it are
    skipped, the others are stored, and the command says so in one line (exit 1)."""
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    spec = tmp_path / "bench.toml"
    without_pgd = SPEC[: SPEC.index('[[evaluation]]\nattack = "pgd"')]
    spec.write_text(without_pgd.replace('architecture = "mlp"',
                                        'architecture = "mlp"\ndefense = "fgsm-at"\ndefense_eps = 2.0\nheld_out = 0'))
    result = _cli("bench", spec, "--store", tmp_path / "s.sqlite", "--device", "cpu", "--no-progress")
    assert result.exit_code == 1, result.output
    assert "4 cells: 0 done before, 2 run now, 1 failed, 1 skipped" in result.output
    line = error_line(result)
    assert "train mlp / digits" in line and "eps=2.0" in line and "run the same command again" in line
    assert {r.kind for r in records(tmp_path / "s.sqlite").values()} == {"train", "attack"}
