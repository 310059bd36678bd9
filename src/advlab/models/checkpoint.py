"""Checkpoints: weights as ``model.safetensors`` plus metadata as ``model.json``; never a pickle.

A checkpoint directory holds::

    model.safetensors   state dict (parameters and buffers, incl. the normalisation buffers)
    model.json          format version, model name + config, dataset, bounds, normalisation, metrics,
                        seed, library versions, sha256 of the weights file, content hash of the weights,
                        and ``meta_hash``: a hash over the fields that decide which model loads

Integrity. :func:`load_checkpoint` rebuilds the net from the registry, checks keys, shapes, the file's sha256
and the content hash of the weights, and never unpickles anything: a pickle or ``torch.save`` archive renamed
to ``model.safetensors`` is detected and refused. ``meta_hash`` (:func:`metadata_hash`) covers ``format``,
``format_version``, ``model`` (name and config: architecture, activation, pooling, ...), ``bounds``,
``normalization`` and ``weights`` (file hash and content hash), so an edit to any of them is refused: nothing
loads a different model under the recorded hash. ``dataset``, ``metrics``, ``seed``, ``extra``, ``versions``
and ``created`` describe the run and may be annotated. Checkpoints of format version 1 (before
``meta_hash``) still load, with a warning; re-save them to protect their metadata.

Crash safety. A save takes the directory's lock (``.advlab.lock``, see :func:`reserve_checkpoint`), then
writes the new weights and metadata under staged names (``.model.safetensors.new``, ``.model.json.new``),
flushes both to disk, and commits with two renames: first the weights, then the metadata. Before the first
rename the directory holds the old checkpoint whole; after the second, the new one. In between it holds the
new weights with the old ``model.json`` and the new metadata staged beside them: :func:`load_checkpoint`
reads the metadata whose sha256 matches the weights file, so it loads the new checkpoint, and the next save
completes the rename. A crash at any moment therefore leaves a directory that loads as the old model or the
new one, never a mix; a concurrent reader sees the same.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from advlab._files import OutputBusyError, hold_lock, make_dirs, remove_empty_dirs
from advlab._provenance import versions
from advlab._validate import check_bool, check_int, check_optional
from advlab.models._ckpt_format import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    _read_meta,
    _resolve,
    _sha256,
    _verified_state,
    metadata_hash,
    model_hash,
    state_hash,
)
from advlab.models._ckpt_format import PROTECTED_FIELDS as PROTECTED_FIELDS
from advlab.models._ckpt_write import LOCK_FILE, STAGED_META, _commit, _consistent, _recover
from advlab.models._ckpt_write import STAGED_WEIGHTS as STAGED_WEIGHTS
from advlab.models.classifier import Classifier
from advlab.models.factory import MODELS, build_net, to_json_value

__all__ = [
    "CheckpointExistsError",
    "OutputBusyError",
    "has_checkpoint",
    "load_checkpoint",
    "load_checkpoint_metadata",
    "metadata_hash",
    "model_hash",
    "reserve_checkpoint",
    "save_checkpoint",
    "state_hash",
]


class CheckpointExistsError(FileExistsError):
    """The output directory already holds a checkpoint and replacing it was not asked for."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"{str(directory)!r} already holds a checkpoint; pass overwrite=True to replace it, or choose "
            f"another directory"
        )
        self.directory = directory


def has_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a checkpoint (or part of one) that a save would replace."""
    out = Path(directory)
    return (out / META_FILE).exists() or (out / WEIGHTS_FILE).exists()


@contextmanager
def reserve_checkpoint(directory: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Checks that ``directory`` can take a checkpoint and holds it for this thread during the block.

    Use it around the work that ends in :func:`save_checkpoint` (as ``advlab train`` does), so a conflicting
    or unwritable path fails before the work starts and no other process can write the directory meanwhile.
    It refuses, at once: a directory that already holds a checkpoint (:class:`CheckpointExistsError`, unless
    ``overwrite``); a path that is a file or lies under one (``NotADirectoryError``); a directory that cannot
    be created or written (``PermissionError`` or another ``OSError``); a directory whose lock another process
    (or thread) holds (:class:`OutputBusyError`, naming its pid). It creates the directory
    and holds its lock file ``.advlab.lock`` (an ``flock``, dropped by the kernel when the process dies);
    :func:`save_checkpoint` inside the block re-enters the lock. On leaving, the lock file is removed, and so
    are the directories it created if they are still empty (the work failed before saving).

    Args:
        directory: the checkpoint directory.
        overwrite: allow replacing a checkpoint that is already there (default ``False``).

    Example:
        >>> import tempfile
        >>> from advlab.models import create_model
        >>> model = create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> with reserve_checkpoint(tempfile.mkdtemp() + "/run") as out:
        ...     path = save_checkpoint(model, out)   # the training would run here, before the save
        >>> sorted(p.name for p in path.iterdir())
        ['model.json', 'model.safetensors']
    """
    out = Path(directory)
    check_bool("overwrite", overwrite)
    if not overwrite and has_checkpoint(out):
        raise CheckpointExistsError(out)
    created = make_dirs(out)
    try:
        with hold_lock(out / LOCK_FILE, f"checkpoint directory {str(out)!r}"):
            if not overwrite and has_checkpoint(out):  # written meanwhile by a process that has finished
                raise CheckpointExistsError(out)
            yield out
    finally:
        remove_empty_dirs(created)


def save_checkpoint(
    model: Classifier,
    directory: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves ``model`` to ``directory`` as ``model.safetensors`` + ``model.json``; returns the directory.

    The directory is created if needed. A checkpoint already there is replaced only with ``overwrite=True``
    (else :class:`CheckpointExistsError`), atomically: a crash at any moment leaves the old checkpoint or
    the new one, whole (see the module's docstring). The directory's lock is held while writing (another
    process writing it meanwhile gets :class:`OutputBusyError`). The JSON records how to
    rebuild the net (registry name and config), bounds, normalisation, ``dataset``, ``metrics``, ``seed``,
    ``extra``, library versions, the creation time (UTC), the sha256 of the weights file,
    :func:`model_hash` of the weights and :func:`metadata_hash` of the model-defining fields.

    Args:
        model: a :class:`Classifier` made by :func:`~advlab.models.create_model` (it needs
            ``model_name``/``model_config``).
        directory: the checkpoint directory.
        dataset: name of the training dataset, recorded as metadata.
        metrics: JSON-serialisable numbers, e.g. ``{"test_accuracy": 0.991}``.
        seed: the training seed.
        extra: any other JSON-serialisable metadata (e.g. the training config).
        overwrite: replace a checkpoint already in ``directory`` (default ``False``).

    Example:
        >>> import tempfile
        >>> from advlab.models import create_model, load_checkpoint
        >>> model = create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> path = save_checkpoint(model, tempfile.mkdtemp(), metrics={"accuracy": 0.9})
        >>> model_hash(load_checkpoint(path)) == model_hash(model)
        True
        >>> path = save_checkpoint(model, path, metrics={"accuracy": 0.95}, overwrite=True)
    """
    if not isinstance(model, Classifier):
        raise TypeError(
            f"save_checkpoint needs a Classifier, got {type(model).__name__}; build models with create_model"
        )
    if not model.model_name or model.model_name not in MODELS:
        raise ValueError(
            f"model_name {model.model_name!r} is not a registered model, so the checkpoint could not be "
            f"rebuilt; build the model with create_model(name, ...)"
        )
    check_optional("seed", seed, check_int, minimum=-(2**63), maximum=2**64 - 1)  # what torch.manual_seed takes
    check_bool("overwrite", overwrite)
    mean, std = model.normalization()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name": model.model_name,
            "config": to_json_value(dict(model.model_config), "model_config"),
        },
        "dataset": to_json_value(dataset, "dataset"),
        "bounds": [float(model.bounds[0]), float(model.bounds[1])],
        "normalization": {"mean": mean, "std": std},
        "metrics": to_json_value(dict(metrics or {}), "metrics"),
        "seed": seed,
        "extra": to_json_value(dict(extra or {}), "extra"),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    state = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    data = save_safetensors(state, metadata={"format": "pt"})
    meta["weights"] = {
        "file": WEIGHTS_FILE,
        "sha256": _sha256(data),
        "content_hash": state_hash(state),
        "num_tensors": len(state),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    meta["meta_hash"] = metadata_hash(meta)
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    out = Path(directory)
    with reserve_checkpoint(out, overwrite=overwrite):
        _recover(out)
        _commit(out, data, text)
    return out


def load_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates ``model.json`` of a checkpoint (directory or the JSON file itself).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is not valid JSON, has the
    wrong format, lacks a required field, or was edited (its model fields do not match its ``meta_hash``).
    While a save is being committed (or after one was interrupted) it returns the metadata that belongs to
    the weights file, as :func:`load_checkpoint` does.
    """
    directory = _resolve(path)
    if (directory / STAGED_META).is_file():
        return dict(_consistent(directory)[0])
    return _read_meta(directory / META_FILE)


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> Classifier:
    """Loads a checkpoint written by :func:`save_checkpoint` and returns the model in eval mode.

    Checks the metadata (fields, format version, ``meta_hash``: an edited ``model.json`` is refused),
    rebuilds the net from the registry and the recorded config, loads the weights with
    ``safetensors.torch.load`` (never ``torch.load``/pickle), checks that tensor names and shapes
    match the rebuilt net exactly, and verifies both the sha256 of the weights file and the content hash of
    the loaded weights. A directory whose save was interrupted at any point loads as the old or the new
    checkpoint (see the module's docstring). The model comes back with ``model_name``/``model_config``
    set, in eval mode, on the CPU (or ``device``).

    Args:
        path: the checkpoint directory, or its ``model.json`` (or ``model.safetensors``).
        device: where to put the model, default CPU.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: invalid/incomplete/edited JSON, unknown model name, weights that are not a safetensors file
            (e.g. a pickle), weights that do not match the JSON (keys, shapes, hashes: damaged or
            tampered with).

    Example:
        >>> import tempfile
        >>> from advlab.models import create_model
        >>> path = save_checkpoint(create_model("mlp", in_shape=(1, 8, 8), num_classes=3), tempfile.mkdtemp())
        >>> load_checkpoint(path).training
        False
    """
    directory = _resolve(path)
    meta, meta_path, data = _consistent(directory)
    weights_path = directory / WEIGHTS_FILE
    name = meta["model"]["name"]
    if name not in MODELS:
        valid = ", ".join(MODELS.names())
        raise ValueError(
            f"{str(meta_path)!r} names model {name!r}, which is not registered (valid names: {valid}); "
            f"import the module that registers it before loading"
        )
    config = dict(meta["model"]["config"])
    in_shape = config.pop("in_shape")
    num_classes = config.pop("num_classes")
    try:
        net, _ = build_net(name, in_shape, num_classes, config)
        norm = meta["normalization"]
        model = Classifier(net, bounds=tuple(meta["bounds"]), mean=norm["mean"], std=norm["std"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild model {name!r} from {str(meta_path)!r}: {err}") from err

    state = _verified_state(data, weights_path, meta, meta_path, model.state_dict())
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())  # e.g. a model saved after .double()
    model.load_state_dict(state, strict=True)
    if model_hash(model) != meta["weights"]["content_hash"]:
        raise ValueError(
            f"the weights in {str(weights_path)!r} do not match the content hash recorded in "
            f"{str(meta_path)!r}: they were modified (tampered or damaged); restore the original checkpoint"
        )
    model.model_name = name
    model.model_config = dict(meta["model"]["config"])
    model.eval()
    if device is not None:
        model = model.to(device)
    return model
