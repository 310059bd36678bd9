"""``advlab evaluate``: the table, the JSON, and one-line errors for every mistake (through ``advlab``'s own
entry point)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from advlab.cli.evaluate_cmd import COMMANDS, evaluate_command
from test_cli_errors import cli, error_line

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "suites" / "pgd-and-square.toml"




@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from advlab.train import Recipe, save_run, train_model

    base = tmp_path_factory.mktemp("cli-evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train_model("softmax", "digits", Recipe(epochs=3, lr=1e-2, batch_size=128), seed=0, threads=1)
    return save_run(run, base / "ck")


def _args(checkpoint: Path, *extra: Any) -> list[Any]:
    return ["evaluate", "--checkpoint", checkpoint, "--n", "24", "--no-progress", "--no-checks", *extra]


@pytest.mark.usefixtures("one_thread")
def test_evaluate_prints_the_table_and_writes_the_json(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ev.json"
    run = cli(capsys, *_args(checkpoint, "--eps", "0.05", "0.1", "--suite", "quick", "--json", out,
                             "--seed", "3", "--batch-size", "10"))
    assert run.code == 0, run.out + run.err
    payload = json.loads(out.read_text())
    assert payload["suite"] == "quick" and payload["eps"] == [0.05, 0.1] and payload["n"] == 24
    cfg = payload["config"]
    assert cfg["seed"] == 3 and cfg["batch_size"] == 10 and cfg["checkpoint"] == str(checkpoint.resolve())
    assert cfg["dataset"] == "digits" and cfg["model"] == "softmax" and cfg["model_hash"]
    assert [a["name"] for a in cfg["suite"]["attacks"]] == ["apgd-ce", "apgd-t"]
    assert len(payload["stages"]) == 4 and payload["checks"] == []
    lines = run.out.splitlines()
    assert lines[0].startswith("suite quick (linf) on softmax / digits test: n=24")
    rows = [line.split() for line in lines if line.split()[:1] in (["0.05"], ["0.1"])]
    for row, acc in zip(rows[:2], payload["robust_accuracy"], strict=True):
        assert row[1] == f"{acc:.1%}"
    assert any("apgd-t" in line and "attacked" not in line for line in lines)
    assert f"results: {out}" in run.out
    # the same command again: the JSON exists, refused before any work; --force replaces it
    again = cli(capsys, *_args(checkpoint, "--eps", "0.05", "--suite", "quick", "--json", out))
    assert "--json" in error_line(again) and "exists" in error_line(again)
    forced = cli(capsys, *_args(checkpoint, "--eps", "0.05", "--suite", "quick", "--json", out, "--force"))
    assert forced.code == 0 and json.loads(out.read_text())["eps"] == [0.05]


@pytest.mark.usefixtures("one_thread")
def test_evaluate_takes_a_suite_file(capsys: pytest.CaptureFixture[str], checkpoint: Path) -> None:
    run = cli(capsys, *_args(checkpoint, "--eps", "0.1", "--suite", EXAMPLE, "--n", "8", "--norm", "l2"))
    assert run.code == 0, run.out + run.err
    assert "suite pgd-and-square (l2)" in run.out and "square-500" in run.out


def test_evaluate_prints_self_check_warnings_one_line_each(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advlab.evaluate._robustness as rob
    from advlab.evaluate._evaluation import Check

    real = rob.robustness

    def with_checks(*args: Any, **kwargs: Any) -> Any:
        kwargs["checks"] = False
        ev = real(*args, **kwargs)
        ev.checks = [Check("single-step", "warn", "FGSM broke 3 points\nthe suite missed", advice="use adaptive='dlr'"),
                     Check("gradients", "pass", "fine")]
        return ev

    monkeypatch.setattr(rob, "robustness", with_checks)
    run = cli(capsys, "evaluate", "--checkpoint", checkpoint, "--n", "8", "--no-progress", "--eps", "0.1",
              "--suite", "quick")
    assert run.code == 0, run.out + run.err
    warned = [line for line in run.out.splitlines() if line.startswith("warning")]
    assert warned == ["warning [single-step]: FGSM broke 3 points the suite missed Advice: use adaptive='dlr'"]


CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("unknown-suite", ["--suite", "nope"], 2, ["--suite", "unknown suite 'nope'", "full", "quick", "standard"]),
    ("missing-suite-file", ["--suite", "{tmp}/none.toml"], 2, ["--suite", "not found"]),
    ("bad-suite-file", ["--suite", "{bad}"], 2, ["--suite", "line 2", "attacks[0].attack", "valid attacks"]),
    ("norm-not-in-suite", ["--norm", "l1"], 2, ["--norm", "linf, l2"]),
    ("eps-negative", ["--eps", "0.1", "-1"], 2, ["--eps", "non-negative"]),
    ("eps-twice", ["--eps", "0.1", "0.1"], 2, ["--eps", "once"]),
    ("adaptive-unknown", ["--adaptive", "magic"], 2, ["--adaptive", "magic"]),
    ("adaptive-bpda-plain-model", ["--adaptive", "bpda"], 1, ["bpda", "Defended"]),
    ("json-in-checkpoint", ["--json", "{ck}/x.json"], 2, ["--json", "--checkpoint"]),
    ("n-zero", ["--n", "0"], 2, ["--n"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistakes_are_one_line(
    capsys: pytest.CaptureFixture[str], checkpoint: Path, tmp_path: Path, case: tuple[str, list[str], int, list[str]]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[attacks]]\nattack = "nope"\n')
    _, extra, code, needles = case
    extra = [a.format(tmp=tmp_path, bad=bad, ck=checkpoint) for a in extra]
    if "--eps" not in extra:
        extra += ["--eps", "0.1"]
    run = cli(capsys, "evaluate", "--checkpoint", checkpoint, "--n", "8", "--no-progress", "--suite", "quick",
              *extra)
    line = error_line(run)
    assert run.code == code, (run, line)
    for needle in needles:
        assert needle in line, line
    assert not list(checkpoint.glob("x.json"))


def test_the_command_is_exported() -> None:
    assert [evaluate_command] == COMMANDS and evaluate_command.name == "evaluate"
    assert torch.__version__  # the module imports without side effects
