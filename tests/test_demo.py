"""``advlab demo``, the README's first command: the main job end to end on the bundled digits."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from advlab.cli.main import cli
from advlab.demo import REPORT_NAME, STORE_NAME
from advlab.store import ResultStore


def _invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


def _error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(("Error:", "advlab: error:"))]
    assert len(lines) == 1, stderr
    return lines[0]


def test_demo_refuses_a_file_and_an_existing_report_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    start = time.perf_counter()
    code, out, err = _invoke(["demo", "--out", str(tmp_path / "file"), "--no-progress"])
    assert code == 1 and out == "" and "is a file" in _error(err)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / REPORT_NAME).write_text("mine")
    code, out, err = _invoke(["demo", "--out", str(tmp_path / "old"), "--no-progress"])
    assert code == 1 and "--overwrite" in _error(err)
    assert time.perf_counter() - start < 5
    assert (tmp_path / "old" / REPORT_NAME).read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [REPORT_NAME]


def test_demo_end_to_end_then_resumes_without_recomputing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = _invoke(["demo", "--out", str(out), "--no-progress"])
    assert code == 0, stderr
    assert re.search(r"8 cells: 0 done before, 8 run now, 0 failed", stdout), stdout
    report, store_path = out / REPORT_NAME, out / STORE_NAME
    assert f"report: {report}" in stdout and report.is_file()
    with ResultStore(store_path, readonly=True) as store:
        records = store.records()
    kinds = sorted(r.kind for r in records)
    assert kinds == ["attack", "attack", "blackbox", "robustness", "robustness", "train", "train", "transfer"]
    evaluations = {r.config["model"]["name"]: r for r in records if r.kind == "robustness"}
    assert set(evaluations) == {"standard", "fast-at"}
    for rec in evaluations.values():
        acc = rec.metrics["robust_accuracy"]
        assert acc == sorted(acc, reverse=True) and rec.metrics["clean_accuracy"] >= 0.95
        checks = {c["name"]: c["status"] for c in rec.checks}
        assert checks["active-test"] == "pass" and rec.metrics["reliable"]
        assert "grid.png" in rec.artifacts and rec.model_hash
    # adversarial training pays off where it was trained (eps 0.1) and the standard model is all but broken at 0.2
    std, adv = (evaluations[m].metrics["robust_accuracy"] for m in ("standard", "fast-at"))
    assert adv[1] > std[1] + 0.05 and std[-1] < 0.1
    html = report.read_text()
    for section in ("warnings", "summary", "curves", "table", "transfer", "grids", "cost"):
        assert f'id="{section}"' in html
    assert "| standard |" in stdout and "| fast-at |" in stdout

    finished = {r.key: r.finished for r in records}
    code, stdout, stderr = _invoke(["demo", "--out", str(out), "--no-progress"])
    assert code == 1 and "--overwrite" in _error(stderr)
    code, stdout, stderr = _invoke(["demo", "--out", str(out), "--no-progress", "--overwrite"])
    assert code == 0, stderr
    assert "8 cells: 8 done before, 0 run now, 0 failed" in stdout
    with ResultStore(store_path, readonly=True) as store:
        assert {r.key: r.finished for r in store.records()} == finished


@pytest.mark.parametrize("args", [["--data", "cifar"], ["--workers", "0"]])
def test_demo_bad_options_are_one_line(tmp_path: Path, args: list[str]) -> None:
    code, out, err = _invoke(["demo", "--out", str(tmp_path / "d"), *args])
    assert code == 2 and out == "" and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_demo_on_mnist_without_its_files_fails_before_any_work(tmp_path: Path) -> None:
    code, out, err = _invoke(["demo", "--data", "mnist", "--data-root", str(tmp_path / "none"),
                              "--out", str(tmp_path / "d"), "--no-progress"])
    assert code == 1 and out == ""
    assert "advlab data fetch mnist" in _error(err)
    assert not (tmp_path / "d").exists()
