"""Safe output files, shared by every package (the bottom floor: imports nothing of advlab).

Three tools for the house rule "files are sacred":

* :func:`write_durably` and :func:`fsync_dir`: a file written under a temporary name in the target's
  directory (same file system) is flushed to disk (``fsync``) before it is renamed over the target, and the
  rename itself is flushed, so a crash at any moment leaves the old file or the new one whole, never a mix
  (the renames are the callers': ``cli/_outputs.write_output``, the checkpoint writer).
* :func:`hold_lock`: an exclusive lock on a lock file (``flock``), so two processes cannot write one output
  at once; the second gets :class:`OutputBusyError` at once, naming the holder's pid. The kernel drops the
  lock when its holder dies (even by ``SIGKILL``), so a stale lock file never blocks anyone. The lock is
  re-entrant within one thread (a function that locks may call another that locks the same file).
* :func:`make_dirs` / :func:`remove_empty_dirs`: create an output directory before the work starts (so an
  unwritable or conflicting path fails in the first second) and remove what was created when the work
  fails.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> created = make_dirs(out)
    >>> with hold_lock(out / ".advlab.lock", f"{str(out)!r}"):
    ...     write_durably(out / "a.txt", lambda tmp: tmp.write_text("hello"))
    >>> (out / "a.txt").read_text(), sorted(p.name for p in out.iterdir())
    ('hello', ['a.txt'])
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "OutputBusyError",
    "fsync_dir",
    "hold_lock",
    "make_dirs",
    "remove_empty_dirs",
    "write_durably",
]


class OutputBusyError(OSError):
    """An output is being written by another process (or thread) that holds its lock."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a directory's entries (renames, new files) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[Path], object]) -> None:
    """Calls ``write(path)`` and flushes the file to disk (``fsync``) before returning."""
    write(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path: Path, err: OSError, action: str) -> OSError:
    """``err`` of the same class with a one-line message that names ``path`` and what to do."""
    reason = err.strerror or str(err)
    return type(err)(f"cannot {action} {str(path)!r} ({reason}); choose a writable directory for the output")


def make_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Creates directory ``path`` and its missing parents; returns the ones it created, outermost first.

    Raises ``NotADirectoryError`` when ``path`` or one of its parents is a file, and an ``OSError`` (e.g.
    ``PermissionError``) with a message naming the path when a directory cannot be created.
    """
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        what = "output directory" if probe == target else f"parent {str(probe)!r} of the output directory"
        raise NotADirectoryError(
            f"{str(target)!r} cannot be an output directory: the {what} is a file (or a broken link), not a "
            f"directory; choose another path"
        )
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError as err:
            if not directory.is_dir():
                remove_empty_dirs(created)
                raise NotADirectoryError(f"{str(directory)!r} is a file, not a directory; choose another path") from err
            continue  # made by someone else meanwhile: not ours to remove
        except OSError as err:
            remove_empty_dirs(created)
            raise _write_error(directory, err, "create the output directory") from err
        created.append(directory)
    return created


def remove_empty_dirs(created: Sequence[Path]) -> None:
    """Removes the directories of :func:`make_dirs` (innermost first) that are still empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): keep it and its parents


# Locks this process holds: (st_dev, st_ino) of the lock file -> [thread id, depth].
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_GUARD = threading.Lock()


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _holder(fd: int, wait: float = 1.0) -> str:
    """The pid the lock's holder wrote into the lock file. The holder writes it just after it locks, so a
    file still empty is read again for up to ``wait`` seconds before the pid is called unknown."""
    deadline = time.monotonic() + wait
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except (OSError, AttributeError):
            return "pid unknown"
        if text.isdigit():
            return f"pid {text}"
        if time.monotonic() >= deadline:
            return "pid unknown"
        time.sleep(0.01)


if sys.platform == "win32":  # pragma: no cover - the CI runs on Linux
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _acquire(lock_path: Path, what: str) -> int:
    """Opens and locks ``lock_path`` (created if needed), writes this pid into it and returns its descriptor."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _write_error(lock_path.parent, err, "write to") from err
        try:
            if not _try_lock(fd):
                raise OutputBusyError(
                    f"{what} is being written by another advlab process ({_holder(fd)}); wait for it to finish "
                    f"or choose another output"
                )
            # The holder before us may have removed the file after we opened it: then our lock is on a file
            # nobody else will see; start again on the one that is there now.
            same = _key(lock_path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextmanager
def hold_lock(lock_path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` for the block; re-entrant within one thread.

    The file is created if needed, holds the pid of the holder, and is removed when the lock is released
    (a file left by a killed holder is not locked and is reused). Another process (or thread) that holds
    the lock makes this raise :class:`OutputBusyError` at once; ``what`` names the output in its message.
    The directory of ``lock_path`` must exist.
    """
    path = Path(lock_path)
    ident = threading.get_ident()
    with _HELD_GUARD:
        key = _key(path)
        entry = _HELD.get(key) if key is not None else None
        if entry is not None and entry[0] == ident:
            entry[1] += 1
        else:
            entry = None
    if entry is not None:  # re-entered by the holding thread
        try:
            yield
        finally:
            with _HELD_GUARD:
                entry[1] -= 1
        return
    fd = _acquire(path, what)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _HELD_GUARD:
        _HELD[key] = [ident, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        try:
            if sys.platform != "win32":  # an open file cannot be removed on Windows
                path.unlink(missing_ok=True)  # while still locked, so nobody locks the removed file
        finally:
            os.close(fd)
