"""Output paths of the ``advlab`` commands: checked before the work starts (so that a bad one fails in the
first second, not after an hour) and written atomically, never replacing an existing file unless asked."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from advlab._files import fsync_dir, write_durably


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with symbolic links followed (as far as they exist)."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (something is there, maybe a file)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | os.PathLike[str], *, what: str, option: str | None = None) -> Path:
    """Checks that ``folder`` is, or can be created as, a folder we may write in: its closest existing
    ancestor must be a folder, and a temporary file must be creatable (and is removed) there. Raises
    ``click.BadParameter`` naming ``what`` is to be written and the folder at fault."""
    target = _absolute(folder)
    base = _nearest_existing(target)
    if not base.is_dir():
        raise click.BadParameter(f"cannot write {what}: {base} is a file, not a folder; choose another path",
                                 param_hint=option)
    try:
        fd, probe = tempfile.mkstemp(prefix=".advlab-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise click.BadParameter(f"cannot write {what}: folder {base} is not writable ({reason}); "
                                 "choose another path", param_hint=option) from None
    return target


def check_output(
    path: str | os.PathLike[str],
    *,
    option: str,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    others: Mapping[str, str | os.PathLike[str] | None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Checks an output path before any work, so that a bad one fails in the first second, not after an hour.

    Refuses (``click.BadParameter`` for ``option``, one line saying what to do): a path that is or lies
    inside an input of the command (``inputs``: option name -> file or folder, e.g. the checkpoint), that
    is the same file as another output (``others``: option name -> path), that is a folder, that exists
    (unless ``overwrite``), or whose folder cannot be created or written (a temporary file is created
    and removed to find out). Symbolic links are followed. Returns ``path`` as given (a ``Path``).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_output(folder / "out.json", option="--json")  # doctest: +ELLIPSIS
        PosixPath('.../out.json')
    """
    out = Path(path)
    target = _absolute(out)
    for name, other in (others or {}).items():
        if other is not None and _absolute(other) == target:
            raise click.BadParameter(f"{out} is also the {name} output; give each output its own file",
                                     param_hint=option)
    for name, source in (inputs or {}).items():
        if source is None:
            continue
        src = _absolute(source)
        if target == src or src in target.parents:
            where = "is" if target == src else "lies inside"
            raise click.BadParameter(f"{out} {where} {name} {source}, an input of this command; write the output "
                                     "elsewhere", param_hint=option)
    if target.is_dir():
        raise click.BadParameter(f"{out} is a folder; give a file path", param_hint=option)
    if os.path.lexists(target) and not overwrite:
        raise click.BadParameter(f"{out} exists; pass --overwrite to replace it, or choose another path",
                                 param_hint=option)
    check_writable_folder(target.parent, what=str(out), option=option)
    return out


def _free_name(target: Path) -> Path:
    """``target``, or ``stem.1.suffix``, ``stem.2.suffix``... the first that does not exist."""
    candidate, i = target, 0
    while os.path.lexists(candidate):
        i += 1
        candidate = target.with_name(f"{target.stem}.{i}{target.suffix}")
    return candidate


def _commit(tmp: Path, target: Path, *, overwrite: bool) -> Path:
    """Moves the finished file ``tmp`` to ``target`` (same folder) in one step. Without ``overwrite`` an
    existing file is never replaced, even one created since the output was checked: the result goes to
    the first free ``stem.N.suffix`` instead. Returns where it went."""
    if overwrite:
        os.replace(tmp, target)
        return target
    while True:
        candidate = _free_name(target)
        try:
            os.link(tmp, candidate)  # fails if candidate exists: no race with another writer
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system
            os.replace(tmp, candidate)
            return candidate
        tmp.unlink()
        return candidate


def write_output(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = False
) -> Path:
    """Writes an output atomically: ``write(tmp)`` fills a temporary file in the same folder, which is
    synced and then renamed to ``path``, so a crash leaves the old file or the new one, whole. Without
    ``overwrite`` an existing file is kept and the result goes to a free ``stem.N.suffix`` (a warning
    says so). Returns the path written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_durably(tmp, write)
        final = _commit(tmp, target, overwrite=overwrite)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if final != target:
        click.echo(f"advlab: warning: {target} appeared while this command ran; kept it and wrote {final}",
                   err=True)
    return final


def write_text_output(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`write_output`); returns the path written."""
    return write_output(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def echo_json(payload: dict[str, Any], out: Path | None = None, *, overwrite: bool = False) -> None:
    """Prints ``payload`` as JSON on stdout and, when ``out`` is given, writes it there too (atomically;
    an existing file is replaced only with ``overwrite``)."""
    text = json.dumps(payload, indent=2, sort_keys=False)
    if out is not None:
        write_text_output(out, text + "\n", overwrite=overwrite)
    click.echo(text)
