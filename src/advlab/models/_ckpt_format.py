"""The checkpoint format: file names, the content hash of the weights, ``meta_hash`` over the model-defining
fields of ``model.json``, validation of ``model.json`` (fields, format version, ``meta_hash``) and the check that
a weights file is safetensors, never a pickle. :mod:`advlab.models.checkpoint` describes the format and is the
public API; this module reads files but never writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

FORMAT = "advlab-checkpoint"
FORMAT_VERSION = 2  # 2: model.json carries meta_hash
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
# The fields of model.json that decide which model loads, covered by meta_hash.
PROTECTED_FIELDS = ("format", "format_version", "model", "bounds", "normalization", "weights")
_HASH_TAG = b"advlab-weights-v1"
_META_TAG = b"advlab-meta-v2\0"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _tensor_bytes(t: Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def state_hash(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted tensor names, dtypes, shapes and raw bytes of a state dict (hex string)."""
    digest = hashlib.sha256(_HASH_TAG)
    for name in sorted(state):
        t = state[name]
        head = json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)])
        digest.update(struct.pack("<Q", len(head)) + head.encode())
        data = _tensor_bytes(t)
        digest.update(struct.pack("<Q", len(data)) + data)
    return digest.hexdigest()


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's weights: stable across saves, devices and processes.

    SHA-256 over the sorted names, dtypes, shapes and bytes of every tensor in ``model.state_dict()``
    (parameters and buffers). Two models with bitwise-equal weights share the hash; any change to one
    value changes it. Use it to key results by model.

    Example:
        >>> from advlab.models import create_model
        >>> import torch
        >>> a = create_model("softmax", in_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
        >>> b = create_model("softmax", in_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
        >>> model_hash(a) == model_hash(b)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_hash needs an nn.Module, got {type(model).__name__}")
    return state_hash(model.state_dict())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata_hash(meta: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the model-defining fields of ``model.json`` (hex string).

    The fields are :data:`PROTECTED_FIELDS`: ``format``, ``format_version``, ``model`` (name and config),
    ``bounds``, ``normalization`` and ``weights`` (file name, sha256, content hash, sizes). Canonical: keys
    sorted, no spaces, ASCII. A field that cannot be hashed (e.g. NaN) gives ``""``, which never matches.
    """
    try:
        text = json.dumps({k: meta.get(k) for k in PROTECTED_FIELDS}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError):
        return ""
    return hashlib.sha256(_META_TAG + text.encode("ascii")).hexdigest()


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (META_FILE, WEIGHTS_FILE):
        return p.parent
    if not p.exists():
        raise FileNotFoundError(
            f"checkpoint {str(p)!r} does not exist; pass a directory written by save_checkpoint "
            f"(holding {META_FILE} and {WEIGHTS_FILE}) or its {META_FILE}"
        )
    if not p.is_dir():
        raise ValueError(
            f"{str(p)!r} is not a checkpoint directory; pass the directory written by save_checkpoint "
            f"or its {META_FILE}"
        )
    return p


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``meta_path`` parsed and validated (fields, format version, ``meta_hash``)."""
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"checkpoint metadata {str(meta_path)!r} is missing; a checkpoint needs {META_FILE} next to "
            f"{WEIGHTS_FILE}; re-save the model with save_checkpoint"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(meta_path)!r} is not valid JSON ({err}); restore it or re-save the model with save_checkpoint"
        ) from err
    _check_meta(meta, meta_path)
    return dict(meta)


def _check_meta(meta: Any, meta_path: Path) -> None:
    where = str(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where!r} is not an advlab checkpoint (expected \"format\": \"{FORMAT}\")")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{where!r} has format_version {version!r}; this advlab reads versions 1..{FORMAT_VERSION} "
            f"(upgrade advlab to read newer checkpoints)"
        )

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(
                f"{where!r} lacks a valid {field!r} ({expected}); the file is damaged or was edited; "
                f"re-save the model with save_checkpoint"
            )

    model = meta.get("model")
    need(isinstance(model, dict) and isinstance(model.get("name"), str), "model.name", "a model name")
    config = model.get("config") if isinstance(model, dict) else None
    need(isinstance(config, dict), "model.config", "an object")
    in_shape = config.get("in_shape") if isinstance(config, dict) else None
    need(isinstance(in_shape, list) and len(in_shape) == 3, "model.config.in_shape", "[C, H, W]")
    num_classes = config.get("num_classes") if isinstance(config, dict) else None
    need(isinstance(num_classes, int), "model.config.num_classes", "an int")
    bounds = meta.get("bounds")
    need(isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds),
         "bounds", "[low, high]")
    norm = meta.get("normalization")
    need(isinstance(norm, dict) and "mean" in norm and "std" in norm, "normalization", "{mean, std}")
    weights = meta.get("weights")
    need(isinstance(weights, dict) and isinstance(weights.get("sha256"), str)
         and isinstance(weights.get("content_hash"), str), "weights", "{sha256, content_hash}")
    if version == 1:
        warnings.warn(
            f"{where!r} is a checkpoint of format version 1, whose model fields are not integrity-protected; "
            f"re-save it (save_checkpoint(load_checkpoint(d), d, overwrite=True)) to protect them",
            UserWarning,
            stacklevel=4,
        )
        return
    need(isinstance(meta.get("meta_hash"), str), "meta_hash", "the hash of the model fields")
    if meta["meta_hash"] != metadata_hash(meta):
        raise ValueError(
            f"{where!r} was edited or damaged: its model fields ({', '.join(PROTECTED_FIELDS[2:])}) no longer "
            f"match its meta_hash, so it would load a different model than the one saved; restore the original "
            f"file, or re-save (retrain) the model with save_checkpoint"
        )


def _check_safetensors_bytes(data: bytes, path: Path) -> None:
    """Refuses anything that is not a safetensors file, without ever unpickling it.

    A safetensors file starts with a little-endian u64 ``n``, then an ``n``-byte JSON header. Anything
    else is refused; pickles and ``torch.save`` archives are named as such in the message.
    """
    head = data[:8]
    header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    header = data[8 : 8 + header_len] if 0 < header_len <= min(_MAX_HEADER, len(data) - 8) else b""
    try:
        if header[:1] == b"{" and isinstance(json.loads(header.decode("utf-8")), dict):
            return
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    if head[:2] == b"PK":
        kind = "a zip archive as written by torch.save, which can run arbitrary code when loaded"
    elif head[:1] == b"\x80" or head[:1] in (b"(", b"c", b"]", b"}"):
        kind = "a Python pickle, which can run arbitrary code when loaded"
    else:
        kind = "no valid safetensors header"
    raise ValueError(
        f"{str(path)!r} is not a safetensors file ({kind}); refusing to load it (it is never unpickled); "
        f"re-save the model with save_checkpoint"
    )


def _verified_state(
    data: bytes, weights_path: Path, meta: Mapping[str, Any], meta_path: Path, expected: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The tensors in ``data`` (the bytes of ``weights_path``), loaded without unpickling, after checking that
    they are a safetensors file with the sha256 recorded in ``meta`` (read from ``meta_path``) and hold exactly
    the tensor names and shapes of ``expected``, the rebuilt net's state dict; ``ValueError`` otherwise."""
    name, config = meta["model"]["name"], meta["model"]["config"]
    _check_safetensors_bytes(data, weights_path)
    if _sha256(data) != meta["weights"]["sha256"]:
        raise ValueError(
            f"{str(weights_path)!r} does not match the sha256 recorded in {str(meta_path)!r}: the weights were "
            f"modified or replaced (tampered or damaged); do not use them, restore the original checkpoint"
        )
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(weights_path)!r} is not a readable safetensors file: {err}") from err

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{str(weights_path)!r} does not match model {name!r} with config {config}: "
            f"missing tensors {missing[:10]}, unexpected tensors {unexpected[:10]}; the JSON and the weights "
            f"belong to different models"
        )
    wrong = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(expected)
        if state[key].shape != expected[key].shape
    ]
    if wrong:
        raise ValueError(
            f"{str(weights_path)!r} does not match model {name!r} with config {config}: "
            f"shape mismatch for {wrong[:5]}; the JSON and the weights belong to different models"
        )
    return state
