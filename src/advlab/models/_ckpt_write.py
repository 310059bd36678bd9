"""The crash-safe commit of a checkpoint (see :mod:`advlab.models.checkpoint`, "Crash safety"): the staged
file names, the two-rename commit, the recovery of an interrupted save, and the reader's choice of the
metadata that belongs to the weights file while a save is being committed (or after one was interrupted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from advlab._files import fsync_dir, write_durably
from advlab.models._ckpt_format import META_FILE, WEIGHTS_FILE, _read_meta, _sha256

LOCK_FILE = ".advlab.lock"
STAGED_WEIGHTS = ".model.safetensors.new"
STAGED_META = ".model.json.new"


def _commit(out: Path, data: bytes, text: str) -> None:
    """Writes the staged files, flushed to disk, then renames the weights and then the metadata into place."""
    write_durably(out / STAGED_WEIGHTS, lambda p: p.write_bytes(data))
    write_durably(out / STAGED_META, lambda p: p.write_text(text, encoding="utf-8"))
    fsync_dir(out)
    os.replace(out / STAGED_WEIGHTS, out / WEIGHTS_FILE)  # from here the staged metadata is the valid one
    os.replace(out / STAGED_META, out / META_FILE)
    fsync_dir(out)


def _recover(out: Path) -> None:
    """Completes or discards what an interrupted save left (the caller holds the lock).

    Staged metadata that matches the weights file belongs to a save interrupted between its two renames:
    it is renamed into place. Other staged files are removed.
    """
    staged = out / STAGED_META
    if staged.is_file() and (out / WEIGHTS_FILE).is_file():
        try:
            meta = _read_meta(staged)
            matches = meta["weights"]["sha256"] == _sha256((out / WEIGHTS_FILE).read_bytes())
        except (OSError, ValueError):
            matches = False
        if matches:
            os.replace(staged, out / META_FILE)
            fsync_dir(out)
    for name in (STAGED_META, STAGED_WEIGHTS):
        (out / name).unlink(missing_ok=True)


def _consistent(directory: Path) -> tuple[dict[str, Any], Path, bytes]:
    """The validated metadata that belongs to the weights file, its path, and the weights' bytes (read once,
    so the bytes checked are the bytes loaded).

    That is ``model.json``, or, when a save was interrupted (or is running) between renaming the weights and
    the metadata into place, the staged metadata whose sha256 matches the weights. When none matches, it is
    ``model.json``, and the caller reports the mismatch.
    """
    meta_path = directory / META_FILE
    staged = directory / STAGED_META
    weights_path = directory / WEIGHTS_FILE
    meta: dict[str, Any] | None = None
    try:
        meta = _read_meta(meta_path)
    except FileNotFoundError:
        if not staged.is_file():
            raise
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"checkpoint weights {str(weights_path)!r} are missing; a checkpoint needs {WEIGHTS_FILE} next to "
            f"{META_FILE}; re-save the model with save_checkpoint"
        )
    data = weights_path.read_bytes()
    if meta is not None and meta["weights"]["sha256"] == _sha256(data):
        return meta, meta_path, data
    for candidate in (staged, meta_path):  # model.json again: a save may have completed meanwhile
        try:
            other = _read_meta(candidate)
        except (OSError, ValueError):
            continue
        if other["weights"]["sha256"] == _sha256(data):
            return other, candidate, data
    if meta is None:
        meta = _read_meta(meta_path)  # raises FileNotFoundError naming model.json
    return meta, meta_path, data
