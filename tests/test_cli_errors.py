"""Every mistake a user can make on the command line is one line that says what is wrong and what to do, with
no traceback (``--debug`` shows it); outputs are checked before any work and never replace an input or an
existing file unless asked.

The commands run in-process through the real entry point :func:`advlab.cli.main.main` (``SystemExit`` and
stdout/stderr captured), and a few in a subprocess (``python -m advlab.cli.main``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from advlab.attacks import list_attacks
from advlab.cli import _errors
from advlab.cli._errors import CommandError, describe, is_user_error, one_line_warnings
from advlab.cli._outputs import check_output, write_output, write_text_output
from advlab.cli.common import resolve_device
from advlab.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


class Run(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    monkeypatch.setenv("ADVLAB_DEFAULT_MALLOC", "1")  # leave this process's malloc settings alone


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained digits checkpoint, a CIFAR-shaped one, broken checkpoints and a small CIFAR data root whose
    train split is empty."""
    from advlab.models import create_model, save_checkpoint
    from advlab.train import Recipe, save_run, train_model

    base = tmp_path_factory.mktemp("cli-errors")
    run = train_model("softmax", "digits", Recipe(epochs=1, lr=1e-2, batch_size=128), seed=0, threads=1)
    ck = save_run(run, base / "ck")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cifar = create_model("softmax", dataset="cifar10", generator=torch.Generator().manual_seed(0))
        ckc = save_checkpoint(cifar, base / "ckc", dataset="cifar10")
    (base / "empty").mkdir()
    bad = base / "bad"
    bad.mkdir()
    for f in ck.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.json").write_text("{broken")
    root = base / "data"
    (root / "cifar10").mkdir(parents=True)
    np.savez(root / "cifar10" / "cifar10-subset.npz",
             x_train=np.zeros((0, 3, 32, 32), np.uint8), y_train=np.zeros((0,), np.int64),
             x_test=np.zeros((4, 3, 32, 32), np.uint8), y_test=np.zeros((4,), np.int64))
    a_file = base / "a-file"
    a_file.write_text("not a folder\n")
    (base / "link").symlink_to(ck, target_is_directory=True)
    return {"ck": ck, "ckc": ckc, "empty": base / "empty", "bad": bad, "root": root, "file": a_file,
            "link": base / "link", "nodata": base / "nodata"}


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> Run:
    """Runs ``advlab ARGS`` through :func:`main`; returns its exit status, stdout and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = info.value.code
    return Run(code if isinstance(code, int) else (0 if code is None else 1), out, err)


def error_line(run: Run) -> str:
    """The one error line of a failed run (click's ``Error: ...`` or ours ``advlab: error: ...``)."""
    text = run.out + run.err
    assert run.code != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in run.err.splitlines() if line.startswith(("Error:", "advlab: error:"))]
    assert len(lines) == 1, text
    assert not any(line.startswith(("Error", "advlab: error")) for line in run.out.splitlines()), text
    return lines[0]


def attack_args(files: dict[str, Path], tmp: Path, *extra: Any, attack: str = "fgsm") -> list[Any]:
    args: list[Any] = ["attack", "--checkpoint", files["ck"], "--attack", attack, "--n", "8", "--no-progress"]
    if "--eps" not in extra:
        args += ["--eps", "0.1"]
    if "--json" not in extra:
        args += ["--json", tmp / "out.json"]
    return [*args, *extra]


# ------------------------------------------------------------------------- every attack, bad values


BAD_FOR_EVERY_ATTACK = {
    "eps-nan": (["--eps", "nan"], 2, ["--eps", "finite"]),
    "eps-inf": (["--eps", "inf"], 2, ["--eps", "finite"]),
    "eps-negative": (["--eps", "0.1", "-1"], 2, ["--eps", "non-negative"]),
    "device-meta": (["--device", "meta"], 2, ["--device", "meta"]),
    "json-exists": (["--json", "{existing}"], 2, ["--json", "exists", "--overwrite"]),
}


@pytest.mark.parametrize("attack", list_attacks())
@pytest.mark.parametrize("case", sorted(BAD_FOR_EVERY_ATTACK))
def test_every_attack_refuses_bad_values_in_one_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, attack: str, case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import advlab.evaluate

    monkeypatch.setattr(advlab.evaluate, "attack_checkpoint", _must_not_run)
    existing = tmp_path / "existing.json"
    existing.write_text("{}\n")
    extra, code, needles = BAD_FOR_EVERY_ATTACK[case]
    extra = [str(a).format(existing=existing) for a in extra]
    run = cli(capsys, *attack_args(files, tmp_path, *extra, attack=attack))
    line = error_line(run)
    assert run.code == code, run
    for needle in needles:
        assert needle in line, line
    assert existing.read_text() == "{}\n" and not (tmp_path / "out.json").exists()


def _must_not_run(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the attack ran although its arguments were bad")


# ------------------------------------------------------------------------- one table of mistakes


NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())

# (name, extra args for `advlab attack` or a full command line after "!", exit status, words in the error line)
CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("n-zero", ["--n", "0"], 2, ["--n", "0"]),
    ("n-negative", ["--n", "-3"], 2, ["--n"]),
    ("batch-size-zero", ["--batch-size", "0"], 2, ["--batch-size"]),
    ("seed-negative", ["--seed", "-1"], 2, ["--seed", "-1"]),
    ("seed-huge", ["--seed", str(2**64)], 2, ["--seed"]),
    ("seed-not-int", ["--seed", "1.5"], 2, ["--seed"]),
    ("device-garbage", ["--device", "gpu7"], 2, ["--device", "not a device"]),
    ("device-negative-index", ["--device", "cuda:-1"], 2, ["--device"]),
    ("eps-missing-value", ["--eps", "abc"], 2, ["--eps", "not a number"]),
    ("json-under-a-file", ["--json", "{file}/x.json"], 2, ["--json", "is a file"]),
    ("json-deep-under-a-file", ["--json", "{file}/a/b/x.json"], 2, ["--json", "is a file"]),
    ("json-in-checkpoint", ["--json", "{ck}/x.json"], 2, ["--json", "--checkpoint", "input"]),
    ("json-over-model", ["--json", "{ck}/model.json", "--overwrite"], 2, ["--json", "--checkpoint"]),
    ("json-in-checkpoint-by-link", ["--json", "{link}/x.json"], 2, ["--json", "--checkpoint"]),
    ("json-is-a-folder", ["--json", "{tmp}"], 2, ["--json", "directory"]),
    ("json-equals-grid", ["--json", "{tmp}/a.json", "--grid", "{tmp}/sub/../a.json"], 2, ["--grid", "own file"]),
    ("grid-in-checkpoint", ["--grid", "{ck}/g.png"], 2, ["--grid", "--checkpoint"]),
    ("grid-exists", ["--grid", "{tmp}/old.png"], 2, ["--grid", "exists", "--overwrite"]),
    ("grid-under-a-file", ["--grid", "{file}/g.png"], 2, ["--grid", "is a file"]),
    ("checkpoint-missing", ["--checkpoint", "{tmp}/nowhere"], 2, ["--checkpoint", "does not exist"]),
    ("checkpoint-empty", ["--checkpoint", "{empty}"], 1, ["model.json", "missing"]),
    ("checkpoint-corrupt", ["--checkpoint", "{bad}"], 1, ["model.json", "JSON"]),
    ("data-other-shape", ["--data", "cifar10", "--data-root", "{root}", "--split", "test"], 1, ["shape", "--data"]),
    ("data-missing", ["--data", "mnist", "--data-root", "{nodata}"], 1, ["advlab data fetch mnist"]),
    ("data-unknown", ["--data", "svhn"], 1, ["svhn"]),
    ("split-empty", ["--checkpoint", "{ckc}", "--data-root", "{root}", "--split", "train"], 1, ["empty"]),
    ("split-unknown", ["--split", "validation"], 2, ["--split"]),
    ("norm-unsupported", ["--norm", "l2"], 2, ["--norm", "linf"]),
    ("option-not-taken", ["--steps", "3"], 2, ["--steps"]),
    ("targeted-out-of-range", ["--targeted", "10"], 1, ["out of range"]),
    ("unknown-attack", ["--attack", "nope"], 2, ["--attack", "nope"]),
    ("fetch-timeout-inf", ["!", "data", "fetch", "mnist", "--timeout", "inf"], 2, ["--timeout", "finite"]),
    ("fetch-timeout-nan", ["!", "data", "fetch", "mnist", "--timeout", "nan"], 2, ["--timeout", "finite"]),
    ("fetch-timeout-negative", ["!", "data", "fetch", "mnist", "--timeout", "-1"], 2, ["--timeout"]),
    ("fetch-timeout-zero", ["!", "data", "fetch", "mnist", "--timeout", "0"], 2, ["--timeout"]),
    ("fetch-root-under-a-file", ["!", "data", "fetch", "mnist", "--data-root", "{file}/data"], 2,
     ["--data-root", "is a file"]),
    ("fetch-unknown", ["!", "data", "fetch", "svhn"], 2, ["svhn"]),
    ("train-seed-negative", ["!", "train", "--seed", "-5", "--data", "digits"], 2, ["--seed"]),
    ("train-device-meta", ["!", "train", "--device", "meta", "--data", "digits"], 2, ["--device", "meta"]),
    ("list-unknown", ["!", "list", "nope"], 2, ["nope"]),
    ("unknown-command", ["!", "attak"], 2, ["attak"]),
]
if NO_CUDA:
    CASES.append(("device-cuda", ["--device", "cuda"], 2, ["--device", "CUDA", "cpu"]))
    CASES.append(("device-cuda-1", ["--device", "cuda:1"], 2, ["--device", "CUDA"]))
if NO_MPS:
    CASES.append(("device-mps", ["--device", "mps"], 2, ["--device", "MPS"]))
if Path("/proc").is_dir():
    CASES.append(("json-unwritable", ["--json", "/proc/advlab-test.json"], 2, ["--json", "cannot write"]))


@pytest.mark.parametrize(("args", "code", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistakes_are_one_line(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, args: list[str], code: int,
    needles: list[str],
) -> None:
    (tmp_path / "old.png").write_bytes(b"old")
    names = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path)}
    args = [a.format(**names) for a in args]
    before = sorted(p.name for p in files["ck"].iterdir())
    run = cli(capsys, *(args[1:] if args[:1] == ["!"] else attack_args(files, tmp_path, *args)))
    line = error_line(run)
    assert run.code == code, run
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out.json").exists()
    assert (tmp_path / "old.png").read_bytes() == b"old"
    assert sorted(p.name for p in files["ck"].iterdir()) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unwritable_folder(capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = error_line(cli(capsys, *attack_args(files, tmp_path, "--json", locked / "x.json")))
    finally:
        locked.chmod(0o700)
    assert "not writable" in line and str(locked) in line


# ------------------------------------------------------------------------- outputs: checked first, never lost


def test_run_writes_once_and_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    out, grid = tmp_path / "res" / "out.json", tmp_path / "res" / "grid.png"
    args = attack_args(files, tmp_path, "--json", out, "--grid", grid)
    run = cli(capsys, *args)
    assert run.code == 0, run
    first = json.loads(out.read_text())
    assert first["attack"] == "fgsm" and grid.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png", "out.json"]  # no temporary files

    out.write_text("mine\n")
    line = error_line(cli(capsys, *args))
    assert "exists" in line and "--overwrite" in line and out.read_text() == "mine\n"

    run = cli(capsys, *args, "--overwrite")
    assert run.code == 0, run
    assert json.loads(out.read_text())["results"] == first["results"]


def test_outputs_are_checked_before_the_checkpoint_is_read(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advlab.evaluate

    monkeypatch.setattr(advlab.evaluate, "attack_checkpoint", _must_not_run)
    line = error_line(cli(capsys, *attack_args(files, tmp_path, "--json", files["file"] / "x.json")))
    assert "is a file" in line


def test_write_output_is_atomic_and_keeps_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old\n")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        write_output(target, fail, overwrite=True)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]

    # Created by someone else while the work ran: kept, the result goes beside it.
    written = write_text_output(target, "new\n", overwrite=False)
    assert written == tmp_path / "r.1.json" and written.read_text() == "new\n" and target.read_text() == "old\n"
    assert write_text_output(target, "newer\n", overwrite=True) == target and target.read_text() == "newer\n"


def test_check_output_probe_leaves_nothing(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new" / "x.json", option="--json") == tmp_path / "new" / "x.json"
    assert list(tmp_path.iterdir()) == []  # neither the probe file nor the missing folder


# ------------------------------------------------------------------------- the boundary itself


def _raiser(err: BaseException) -> Any:
    def attack_checkpoint(*args: Any, **kwargs: Any) -> Any:
        raise err

    return attack_checkpoint


@pytest.mark.parametrize(
    ("err", "code", "needles", "bug"),
    [
        (ValueError("eps must be\nfinite"), 1, ["fgsm: eps must be finite", "--debug"], False),
        (PermissionError(13, "Permission denied", "/x/y"), 1, ["Permission denied: /x/y"], False),
        (MemoryError(), 1, ["out of memory", "--batch-size"], False),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), 1, ["out of memory", "--batch-size"], False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 1, ["RuntimeError", "mat1"], True),
        (KeyError("layer"), 1, ["KeyError", "layer"], True),
        (TypeError("f() got an unexpected keyword argument 'x'"), 1, ["TypeError"], True),
        (AssertionError(), 1, ["AssertionError"], True),
        (KeyboardInterrupt(), 130, ["interrupted"], False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_boundary(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    err: BaseException, code: int, needles: list[str], bug: bool,
) -> None:
    import advlab.evaluate

    monkeypatch.setattr(advlab.evaluate, "attack_checkpoint", _raiser(err))
    run = cli(capsys, *attack_args(files, tmp_path))
    line = error_line(run)
    assert run.code == code and line.startswith("advlab: error: ")
    for needle in needles:
        assert needle in line, line
    assert ("this is a bug" in line) is bug
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_lets_the_traceback_through(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    args = attack_args(files, tmp_path, "--checkpoint", files["bad"])
    if how == "env":
        monkeypatch.setenv("ADVLAB_DEBUG", "1")
    else:
        args = ["--debug", *args]
    with pytest.raises(ValueError, match="not valid JSON"):
        main([str(a) for a in args])


def test_debug_in_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    """The real process: one line and status 1 without ``--debug``, Python's traceback with it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ADVLAB_DEFAULT_MALLOC": "1"}
    env.pop("ADVLAB_DEBUG", None)
    args = [str(a) for a in attack_args(files, tmp_path, "--checkpoint", files["empty"])]
    plain = subprocess.run([sys.executable, "-m", "advlab.cli.main", *args], capture_output=True, text=True,
                           env=env, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]
    assert plain.stderr.startswith("advlab: error: fgsm: ") and "model.json" in plain.stderr
    assert "(run with --debug for the traceback)" in plain.stderr

    debug = subprocess.run([sys.executable, "-m", "advlab.cli.main", "--debug", *args], capture_output=True,
                           text=True, env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "model.json" in debug.stderr.splitlines()[-1]


def test_help_and_version_still_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    run = cli(capsys, "--help")
    assert run.code == 0 and "--debug" in run.out
    assert cli(capsys, "--version").code == 0
    assert "--overwrite" in cli(capsys, "attack", "--help").out


# ------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("device", "needle"),
    [("meta", "meta"), ("gpu", "not a device"), ("", "not a device"), ("lazy", "does not run")]
    + ([("cuda", "CUDA")] if NO_CUDA else []) + ([("mps", "MPS")] if NO_MPS else []),
)
def test_resolve_device_refuses(device: str, needle: str) -> None:
    import click

    with pytest.raises(click.BadParameter, match=needle) as info:
        resolve_device(device)
    assert "\n" not in info.value.format_message()


def test_resolve_device_accepts() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    ("err", "user"),
    [
        (ValueError("x"), True), (TypeError("eps must be a number, got str 'a'"), True), (OSError("x"), True),
        (FileNotFoundError(2, "No such file or directory", "a"), True), (MemoryError(), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("Expected all tensors to be on the same device"), False),
        (TypeError("'NoneType' object is not subscriptable"), False), (KeyError("a"), False),
        (IndexError("list index out of range"), False), (AttributeError("x"), False),
    ],
)
def test_is_user_error(err: BaseException, user: bool) -> None:
    assert is_user_error(err) is user


def test_describe() -> None:
    assert describe(FileNotFoundError(2, "No such file or directory", "a.json")) == "No such file or directory: a.json"
    assert describe(ValueError("two\n  lines")) == "two lines"
    assert describe(ValueError()) == "ValueError"
    assert "free some space" in describe(OSError(28, "No space left on device"))


def test_command_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    CommandError("a\nb").show()
    assert capsys.readouterr().err == "advlab: error: a b (run with --debug for the traceback)\n"


def test_warnings_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with one_line_warnings(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("first\nsecond", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "advlab: warning: first second\n"
    monkeypatch.setenv(_errors.DEBUG_ENV, "1")
    assert _errors.debug_enabled()
