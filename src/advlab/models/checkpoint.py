"""Checkpoints: weights as ``model.safetensors`` plus metadata as ``model.json``; never a pickle.

A checkpoint directory holds::

    model.safetensors   state dict (parameters and buffers, incl. the normalisation buffers)
    model.json          format version, model name + config, dataset, bounds, normalisation, metrics,
                        seed, library versions, sha256 of the weights file, content hash of the weights

:func:`load_checkpoint` rebuilds the net from the registry, checks keys, shapes, the file's sha256 and
the content hash, and never unpickles anything: a pickle or ``torch.save`` archive renamed to
``model.safetensors`` is detected and refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from advlab._provenance import versions
from advlab._validate import check_int, check_optional
from advlab.models.classifier import Classifier
from advlab.models.factory import MODELS, build_net, to_json_value

FORMAT = "advlab-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
_HASH_TAG = b"advlab-weights-v1"
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: Classifier,
    directory: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Saves ``model`` to ``directory`` as ``model.safetensors`` + ``model.json``; returns the directory.

    The directory is created if needed; existing checkpoint files in it are replaced (each file is
    written to a temporary name and renamed). The JSON records how to rebuild the net (registry name and
    config), bounds, normalisation, ``dataset``, ``metrics``, ``seed``, ``extra``, library versions, the
    creation time (UTC), the sha256 of the weights file and :func:`model_hash` of the weights.

    Args:
        model: a :class:`Classifier` made by :func:`~advlab.models.create_model` (it needs
            ``model_name``/``model_config``).
        directory: the checkpoint directory.
        dataset: name of the training dataset, recorded as metadata.
        metrics: JSON-serialisable numbers, e.g. ``{"test_accuracy": 0.991}``.
        seed: the training seed.
        extra: any other JSON-serialisable metadata (e.g. the training config).

    Example:
        >>> import tempfile
        >>> from advlab.models import create_model, load_checkpoint
        >>> model = create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> path = save_checkpoint(model, tempfile.mkdtemp(), metrics={"accuracy": 0.9})
        >>> model_hash(load_checkpoint(path)) == model_hash(model)
        True
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
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILE
    _atomic_write(weights_path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    meta["weights"] = {
        "file": WEIGHTS_FILE,
        "sha256": _file_sha256(weights_path),
        "content_hash": state_hash(state),
        "num_tensors": len(state),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    _atomic_write(out / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out


def _atomic_write(path: Path, write: Any) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def load_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates ``model.json`` of a checkpoint (directory or the JSON file itself).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is not valid JSON, has the
    wrong format, or lacks a required field.
    """
    meta_path = _resolve(path) / META_FILE
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
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
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


def _check_safetensors_file(path: Path) -> None:
    """Refuses anything that is not a safetensors file, without ever unpickling it.

    A safetensors file starts with a little-endian u64 ``n``, then an ``n``-byte JSON header. Anything
    else is refused; pickles and ``torch.save`` archives are named as such in the message.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = f.read(header_len) if 0 < header_len <= min(_MAX_HEADER, size - 8) else b""
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


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> Classifier:
    """Loads a checkpoint written by :func:`save_checkpoint` and returns the model in eval mode.

    Rebuilds the net from the registry and the recorded config, loads the weights with
    ``safetensors.torch.load_file`` (never ``torch.load``/pickle), checks that tensor names and shapes
    match the rebuilt net exactly, and verifies both the sha256 of the weights file and the content hash of
    the loaded weights. The model comes back with ``model_name``/``model_config`` set, in eval mode, on
    the CPU (or ``device``).

    Args:
        path: the checkpoint directory, or its ``model.json`` (or ``model.safetensors``).
        device: where to put the model, default CPU.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: invalid/incomplete JSON, unknown model name, weights that are not a safetensors file
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
    meta = load_checkpoint_metadata(directory)
    meta_path = directory / META_FILE
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"checkpoint weights {str(weights_path)!r} are missing; a checkpoint needs {WEIGHTS_FILE} next to "
            f"{META_FILE}; re-save the model with save_checkpoint"
        )
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

    _check_safetensors_file(weights_path)
    if _file_sha256(weights_path) != meta["weights"]["sha256"]:
        raise ValueError(
            f"{str(weights_path)!r} does not match the sha256 recorded in {str(meta_path)!r}: the weights were "
            f"modified or replaced (tampered or damaged); do not use them, restore the original checkpoint"
        )
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(weights_path)!r} is not a readable safetensors file: {err}") from err

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{str(weights_path)!r} does not match model {name!r} with config {meta['model']['config']}: "
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
            f"{str(weights_path)!r} does not match model {name!r} with config {meta['model']['config']}: "
            f"shape mismatch for {wrong[:5]}; the JSON and the weights belong to different models"
        )
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
