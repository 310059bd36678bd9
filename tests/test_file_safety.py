"""Files are sacred: atomic checkpoint saves (SIGKILL at random points), the output lock (two ``advlab train``
into one directory), ``--overwrite`` and the output-path checks that run before any work."""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from advlab._files import OutputBusyError, hold_lock, make_dirs, remove_empty_dirs
from advlab.cli._outputs import write_output
from advlab.models import (
    CheckpointExistsError,
    Classifier,
    checkpoint,
    create_model,
    load_checkpoint,
    load_checkpoint_metadata,
    model_hash,
    reserve_checkpoint,
    save_checkpoint,
)
from advlab.models.checkpoint import LOCK_FILE, STAGED_META, STAGED_WEIGHTS

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork"),
]

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
ADVLAB = [sys.executable, "-m", "advlab.cli.main"]
QUICK_TRAIN = ["train", "--model", "softmax", "--data", "digits", "--n-train", "64", "--epochs", "1",
               "--no-progress", "--device", "cpu"]


def _model(seed: int, name: str = "mlp", **hparams: Any) -> Classifier:
    return create_model(name, in_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(seed),
                        **hparams)


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _error(output: str) -> str:
    """The one error line of a failed command, without its prefix (click's ``Error:`` or ``advlab: error:``)
    and hint; fails unless there is exactly one and no traceback."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith(("Error: ", "advlab: error: "))]
    assert len(lines) == 1, output
    message = lines[0].removeprefix("Error: ").removeprefix("advlab: error: ")
    return message.removesuffix(" (run with --debug for the traceback)")


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------- the _files helpers


def test_an_output_is_replaced_whole_and_nothing_is_left_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_output(target, fail, overwrite=True)
    assert target.read_text() == "old" and _files(tmp_path) == ["a.txt"]
    write_output(target, lambda tmp: tmp.write_text("new"), overwrite=True)
    assert target.read_text() == "new" and _files(tmp_path) == ["a.txt"]


def test_make_dirs_refuses_files_in_the_way_and_removes_only_what_it_made(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"the output directory is a file"):
        make_dirs(tmp_path / "f")
    with pytest.raises(NotADirectoryError, match=r"parent '.*f' of the output directory is a file"):
        make_dirs(tmp_path / "f" / "sub" / "run")
    created = make_dirs(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a" / "b") == []
    (tmp_path / "a" / "keep").write_text("x")
    remove_empty_dirs(created)
    assert _files(tmp_path / "a") == ["keep"]


def test_lock_is_reentrant_in_a_thread_exclusive_across_threads_and_removed_after(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with hold_lock(lock, "'out'"):
                pass
        except BaseException as err:
            errors.append(err)

    with hold_lock(lock, "'out'"):
        assert lock.read_text() == f"{os.getpid()}\n"
        with hold_lock(lock, "'out'"):  # re-entered by the same thread
            pass
        assert lock.exists()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], OutputBusyError)
    assert str(errors[0]) == (f"'out' is being written by another advlab process (pid {os.getpid()}); wait for it "
                              f"to finish or choose another output")
    assert not lock.exists()
    lock.write_text("999999\n")  # left by a killed process: not locked, so it does not block
    with hold_lock(lock, "'out'"):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


# ---------------------------------------------------------------- reserve_checkpoint and overwrite


def test_reserve_refuses_conflicting_paths_before_creating_anything(tmp_path: Path) -> None:
    existing = save_checkpoint(_model(0, "softmax"), tmp_path / "ck")
    exists = r"'.*ck' already holds a checkpoint; pass overwrite=True"
    with pytest.raises(CheckpointExistsError, match=exists), reserve_checkpoint(existing):
        pytest.fail("the block must not run")
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(NotADirectoryError, match="is a file"), reserve_checkpoint(path):
            pytest.fail("the block must not run")
    bad = reserve_checkpoint(tmp_path / "x", overwrite=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overwrite must be True or False"), bad:
        pass
    assert _files(tmp_path) == ["ck", "file"] and _files(existing) == ["model.json", "model.safetensors"]


def test_reserve_removes_the_directories_it_made_when_the_work_fails(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    with pytest.raises(RuntimeError), reserve_checkpoint(out) as path:
        assert path == out and _files(out) == [LOCK_FILE]
        raise RuntimeError("training failed")
    assert _files(tmp_path) == []
    with reserve_checkpoint(out):
        save_checkpoint(_model(0, "softmax"), out)  # re-enters the lock
    assert _files(out) == ["model.json", "model.safetensors"]


@pytest.mark.skipif(_is_root(), reason="root may write anywhere")
def test_reserve_refuses_an_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for path in (locked, locked / "run"):
            denied = r"cannot .*'.*ro.*' \(Permission denied\); choose a writable"
            with pytest.raises(PermissionError, match=denied), reserve_checkpoint(path):
                pass
    finally:
        locked.chmod(0o700)


def test_a_save_into_a_locked_directory_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    out.mkdir()
    started = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with reserve_checkpoint(out):
            started.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        started.wait(10)
        busy = rf"'.*ck' is being written by another advlab process \(pid {os.getpid()}\)"
        with pytest.raises(OutputBusyError, match=busy):
            save_checkpoint(_model(0, "softmax"), out)
    finally:
        release.set()
        thread.join()
    assert _files(out) == []


# ---------------------------------------------------------------- crash windows, deterministically


class _Crash(BaseException):
    """Stands for the process dying: nothing after it runs (not even ``except Exception`` handlers)."""


def _crash_at_replace(monkeypatch: pytest.MonkeyPatch, survive: int) -> None:
    """``os.replace`` works ``survive`` times, then the process 'dies'."""
    real = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        if calls["n"] >= survive:
            raise _Crash
        calls["n"] += 1
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(("survive", "loads"), [(0, "old"), (1, "new")])
def test_a_crash_between_the_renames_loads_the_old_or_the_new_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, survive: int, loads: str
) -> None:
    old, new, third = _model(0), _model(1), _model(2)
    out = save_checkpoint(old, tmp_path / "ck", metrics={"n": 0})
    with monkeypatch.context() as patch:
        _crash_at_replace(patch, survive)
        with pytest.raises(_Crash):
            save_checkpoint(new, out, metrics={"n": 1}, overwrite=True)
    expected = {"old": old, "new": new}[loads]
    assert STAGED_META in _files(out)  # the crash left the staged metadata behind
    assert model_hash(load_checkpoint(out)) == model_hash(expected)
    meta = load_checkpoint_metadata(out)
    assert meta["weights"]["content_hash"] == model_hash(expected)
    assert meta["metrics"] == {"n": 0 if loads == "old" else 1}
    # A second save first completes (or discards) what the first left; then it dies before writing anything.
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "_commit", lambda *args: (_ for _ in ()).throw(_Crash()))
        with pytest.raises(_Crash):
            save_checkpoint(third, out, overwrite=True)
    assert _files(out) == ["model.json", "model.safetensors"]  # completed: model.json is the new one
    assert model_hash(load_checkpoint(out)) == model_hash(expected)
    assert load_checkpoint_metadata(out)["metrics"] == {"n": 0 if loads == "old" else 1}
    # ... and a save that completes leaves exactly the two files.
    save_checkpoint(third, out, overwrite=True)
    assert model_hash(load_checkpoint(out)) == model_hash(third)
    assert _files(out) == ["model.json", "model.safetensors"]


def test_a_crash_in_the_first_save_leaves_no_checkpoint_that_loads_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(0)
    out = tmp_path / "ck"
    with monkeypatch.context() as patch:
        _crash_at_replace(patch, 1)
        with pytest.raises(_Crash):
            save_checkpoint(model, out)
    assert "model.json" not in _files(out)
    assert model_hash(load_checkpoint(out)) == model_hash(model)  # the staged metadata completes it
    save_checkpoint(_model(1), out, overwrite=True)
    assert _files(out) == ["model.json", "model.safetensors"]


# ---------------------------------------------------------------- SIGKILL at random points

# A process that imports advlab once and then, per request, forks a child that saves the two models over the
# checkpoint in turn, without end, until the test kills it: many kills at random points of a save, each
# costing a fork, not a Python start.
_ZYGOTE = r"""
import os, sys, traceback
import torch
torch.set_num_threads(1)
from advlab.models import load_checkpoint, save_checkpoint
models = [load_checkpoint(p) for p in sys.argv[2:4]]
target = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "go":
        pid = os.fork()
        if pid == 0:
            try:
                i = int(arg[0])
                while True:
                    save_checkpoint(models[i % 2], target, metrics={"i": i}, overwrite=True)
                    i += 1
            except BaseException:
                traceback.print_exc()
                os._exit(3)
        print(pid, flush=True)
    elif cmd == "reap":
        _, status = os.waitpid(int(arg[0]), 0)
        print(status, flush=True)
"""


def _readline(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    assert line, f"the writer process stopped answering: {proc.stderr.read() if proc.stderr else ''}"
    return line.strip()


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, str, str]]:
    """The forking writer, the target directory (holding the old model) and the hashes of old and new."""
    old, new = _model(0, hidden=[512, 256]), _model(1, hidden=[512, 256])  # ~170k parameters, ~0.7 MB
    paths = [save_checkpoint(m, tmp_path / name) for m, name in ((old, "src-old"), (new, "src-new"))]
    target = save_checkpoint(old, tmp_path / "ck")
    proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE, str(target), *map(str, paths)], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _readline(proc) == "ready"
        yield proc, target, model_hash(old), model_hash(new)
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_sigkill_during_saves_always_leaves_the_old_or_the_new_model(
    zygote: tuple[subprocess.Popen[str], Path, str, str],
) -> None:
    """Many SIGKILLs at random moments (seeded delays) while checkpoints are saved over one another: after each,
    the directory loads, as one of the two models, with the metadata that belongs to it."""
    proc, target, old_hash, new_hash = zygote
    assert proc.stdin is not None
    rng = random.Random(0)
    seen: dict[str, int] = {}
    mid_save = 0
    for trial in range(60):
        proc.stdin.write(f"go {trial}\n")
        proc.stdin.flush()
        pid = int(_readline(proc))
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(pid, signal.SIGKILL)
        proc.stdin.write(f"reap {pid}\n")
        proc.stdin.flush()
        status = int(_readline(proc))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the writer failed on its own (exit status {status}; its traceback is on the zygote's stderr)")
        names = _files(target)
        mid_save += any(n in names for n in (STAGED_META, STAGED_WEIGHTS))
        loaded = load_checkpoint(target)  # never raises
        h = model_hash(loaded)
        assert h in (old_hash, new_hash), f"trial {trial}: a model that is neither the old nor the new one"
        meta = load_checkpoint_metadata(target)
        assert meta["weights"]["content_hash"] == h
        seen["old" if h == old_hash else "new"] = seen.get("old" if h == old_hash else "new", 0) + 1
    print(f"loaded after SIGKILL: {seen}; killed mid-save (staged files left): {mid_save} of 60")
    assert set(seen) == {"old", "new"}  # the kills landed at many different points
    assert mid_save > 0


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> bool:
    """Waits until ``path`` exists (``True``) or ``proc`` ends (``False``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def test_sigkill_of_advlab_train_saving_over_a_checkpoint_leaves_the_old_or_the_new(tmp_path: Path) -> None:
    """``advlab train --overwrite`` killed at random points after it has locked --out (while it loads data,
    trains and saves), and once the moment its save starts: the directory always loads as the old model or the
    one the command trains; a killed run's lock file does not block the next run."""
    target = save_checkpoint(_model(0, "softmax"), tmp_path / "ck")
    old_hash = model_hash(load_checkpoint(target))
    rng = random.Random(1)
    args = [*ADVLAB, *QUICK_TRAIN, "--seed", "7", "--out", str(target), "--overwrite"]
    outcomes = []
    for trial in range(3):
        proc = subprocess.Popen(args, env=ENV, cwd=tmp_path, text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if trial == 0:  # the moment the save starts writing
            _wait_for(target / STAGED_WEIGHTS, proc)
        elif _wait_for(target / LOCK_FILE, proc):  # a random point after --out was checked and locked
            time.sleep(rng.uniform(0.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
        outcomes.append((proc.returncode, model_hash(load_checkpoint(target))))
    # The same command run to the end defines "the new model"; the stale lock file did not stop it.
    done = subprocess.run(args, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    new_hash = model_hash(load_checkpoint(target))
    assert new_hash != old_hash
    assert json.loads(done.stdout)["checkpoint"] == str(target)
    names = {old_hash: "old", new_hash: "new"}
    print(f"return codes and models after each kill: {[(rc, names.get(h, h)) for rc, h in outcomes]}")
    assert all(h in (old_hash, new_hash) for _, h in outcomes)
    assert any(rc == -signal.SIGKILL for rc, _ in outcomes)
    assert _files(target) == ["model.json", "model.safetensors"]


# ---------------------------------------------------------------- two writers, one directory


def test_two_advlab_train_into_one_directory_exactly_one_succeeds(tmp_path: Path) -> None:
    """Started together: one locks --out, trains and saves; the other stops at once, saying which process is
    writing there (or, had the first already finished, that a checkpoint is there)."""
    out = tmp_path / "ck"
    args = [*ADVLAB, *QUICK_TRAIN, "--out", str(out)]
    procs = [subprocess.Popen(args, env=ENV, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.pid, p.returncode, out_, err) for p, (out_, err) in zip(procs, outputs, strict=True)]
    winners = [r for r in results if r[1] == 0]
    losers = [r for r in results if r[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (win_pid, _, win_out, _), (_, lose_rc, lose_out, lose_err) = winners[0], losers[0]
    assert lose_rc == 1 and lose_out == "" and len(lose_err.strip().splitlines()) == 1, lose_err
    said = _error(lose_err)
    busy = (f"checkpoint directory {str(out)!r} is being written by another advlab process (pid {win_pid}); "
            f"wait for it to finish or choose another --out")
    exists = f"--out {str(out)!r} already holds a checkpoint; pass --overwrite to replace it"
    print(f"the loser said: {said}")
    assert said == busy or said.startswith(exists), said
    assert json.loads(win_out)["checkpoint"] == str(out)
    load_checkpoint(out)
    assert _files(out) == ["model.json", "model.safetensors"]


def test_advlab_train_into_a_directory_being_written_stops_at_once(tmp_path: Path) -> None:
    """This process holds --out (as a running ``advlab train`` would); ``advlab train --overwrite`` there fails
    before loading data, naming this pid, and leaves the directory as it was."""
    out = save_checkpoint(_model(0, "softmax"), tmp_path / "ck")
    before = (out / "model.json").read_bytes()
    with reserve_checkpoint(out, overwrite=True):
        result = subprocess.run([*ADVLAB, *QUICK_TRAIN, "--out", str(out), "--overwrite"], env=ENV, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert _error(result.stderr) == (
        f"checkpoint directory {str(out)!r} is being written by another advlab process (pid {os.getpid()}); "
        f"wait for it to finish or choose another --out")
    assert (out / "model.json").read_bytes() == before
    assert _files(out) == ["model.json", "model.safetensors"]


# ---------------------------------------------------------------- --out is checked before the work starts


def _invoke(args: list[str]) -> Any:
    from advlab.cli.main import cli

    return CliRunner().invoke(cli, args)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any training fail the test: the refusals below must come before it."""
    import advlab.cli.train_cmd as train_cmd

    def train_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(train_cmd, "train_model", train_model)


@pytest.mark.usefixtures("no_training")
@pytest.mark.parametrize("command", [QUICK_TRAIN])
def test_out_is_checked_before_training(tmp_path: Path, command: list[str]) -> None:
    existing = save_checkpoint(_model(0, "softmax"), tmp_path / "ck")
    before = {name: (existing / name).read_bytes() for name in _files(existing)}
    (tmp_path / "file").write_text("x")
    cases = [
        (existing, f"--out {str(existing)!r} already holds a checkpoint; pass --overwrite to replace it, or choose "
                   f"another --out"),
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "run", "is a file"),
    ]
    _invoke(["--help"])  # imports the commands before the clock starts
    for out, message in cases:
        start = time.perf_counter()
        result = _invoke([*command, "--out", str(out)])
        assert time.perf_counter() - start < 1.0
        assert result.exit_code in (1, 2) and result.stdout == ""  # 2: click's own check that --out is no file
        assert message in _error(result.output)
    assert {name: (existing / name).read_bytes() for name in _files(existing)} == before
    assert _files(tmp_path) == ["ck", "file"]


@pytest.mark.usefixtures("no_training")
def test_an_unwritable_out_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent the user may not write to (simulated, so the test also runs as root, who may write anywhere)."""
    real_mkdir = os.mkdir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        real_mkdir(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "mkdir", mkdir)
    _invoke(["--help"])
    start = time.perf_counter()
    result = _invoke([*QUICK_TRAIN, "--out", str(tmp_path / "ro" / "a" / "b")])
    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 1 and result.stdout == ""
    assert _error(result.output) == (
        f"cannot create the output directory {str(tmp_path / 'ro' / 'a')!r} (Permission denied); choose a "
        f"writable directory for the output")
    assert _files(tmp_path / "ro") == []


def test_overwrite_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    out = save_checkpoint(_model(0, "softmax"), tmp_path / "ck")
    old_hash = model_hash(load_checkpoint(out))
    result = _invoke([*QUICK_TRAIN, "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(out)
    assert model_hash(load_checkpoint(out)) != old_hash
    assert load_checkpoint_metadata(out)["dataset"] == "digits"
    assert _files(out) == ["model.json", "model.safetensors"]


def test_a_failed_train_leaves_no_directory_behind(tmp_path: Path) -> None:
    result = _invoke(["train", "--model", "no-such-net", "--out", str(tmp_path / "runs" / "ck"), "--no-progress"])
    assert result.exit_code == 1 and "unknown model 'no-such-net'" in result.output
    assert _files(tmp_path) == []
