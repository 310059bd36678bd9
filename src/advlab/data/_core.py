"""Dataset registry, data-root resolution and the cached loader behind :func:`load_dataset`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch

from advlab._registry import Registry
from advlab._validate import check_int

SPLITS: tuple[str, ...] = ("train", "test")
"""The splits every dataset provides."""

DATA_ENV_VAR = "ADVLAB_DATA"
"""Environment variable naming the data root when no ``root`` / ``--data-root`` is given."""

Locator = Callable[[Path, str], tuple[Path, ...]]
"""``locate(root, split) -> files``: the files a split is read from; raises :class:`DatasetNotFoundError`."""

Reader = Callable[[tuple[Path, ...], str], tuple[np.ndarray, np.ndarray]]
"""``read(files, split) -> (x, y)``: ``x`` NCHW, ``uint8`` in 0..255 or floating in [0, 1]; ``y`` integer."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a registered dataset.

    Args:
        name: registry name, e.g. ``"mnist"``.
        shape: shape of one example, ``(C, H, W)``.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        class_names: one human-readable name per class, in label order.
        mean: per-channel mean of the train split in [0, 1] units.
        std: per-channel standard deviation of the train split in [0, 1] units.
        files: paths relative to the data root that a full copy consists of (``()`` when bundled).
        description: one line about the data.
        citation: the reference to cite when using the data.

    Example:
        >>> from advlab.data import dataset_info
        >>> dataset_info("mnist").shape
        (1, 28, 28)
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[str, ...]
    description: str = ""
    citation: str = ""


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    read: Reader
    locate: Locator | None


_DATASETS: Registry[_Entry] = Registry("dataset")


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not under the data root; the message says which, where and how to get them."""


def register_dataset(info: DatasetInfo, *, locate: Locator | None = None) -> Callable[[Reader], Reader]:
    """Registers a dataset: decorate its reader, ``read(files, split) -> (x, y)``.

    ``locate(root, split)`` returns the files a split is read from (raising :class:`DatasetNotFoundError`
    when they are missing); leave it ``None`` for data that needs no files (the reader then gets ``()``).
    The loader validates the reader's output against ``info`` (shape, label range) and caches it.

    Args:
        info: the dataset's :class:`DatasetInfo`; ``info.name`` is the registry key.
        locate: maps ``(data_root, split)`` to the files to read, or ``None`` for bundled data.

    Example:
        >>> import numpy as np
        >>> from advlab.data import DatasetInfo, register_dataset
        >>> info = DatasetInfo("toy", (1, 2, 2), 2, ("a", "b"), (0.5,), (0.5,), ())
        >>> @register_dataset(info)  # doctest: +SKIP
        ... def _read(files, split):
        ...     return np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 1, 0, 1])
    """
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset expects a DatasetInfo, got {type(info).__name__}")
    if len(info.shape) != 3:
        raise ValueError(f"DatasetInfo.shape must be (C, H, W) of positive ints, got {info.shape}")
    for i, d in enumerate(info.shape):
        check_int(f"DatasetInfo {info.name!r}: shape[{i}]", d)
    if len(info.class_names) != info.num_classes:
        raise ValueError(
            f"DatasetInfo {info.name!r}: {len(info.class_names)} class names for {info.num_classes} classes; "
            "give one name per class"
        )
    if len(info.mean) != info.shape[0] or len(info.std) != info.shape[0]:
        raise ValueError(f"DatasetInfo {info.name!r}: mean and std need one value per channel ({info.shape[0]})")

    def decorator(read: Reader) -> Reader:
        _DATASETS.register(info.name)(_Entry(info=info, read=read, locate=locate))
        return read

    return decorator


def list_datasets() -> list[str]:
    """Sorted names of the registered datasets.

    Example:
        >>> from advlab.data import list_datasets
        >>> list_datasets()
        ['cifar10', 'digits', 'fashion-mnist', 'mnist']
    """
    return _DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset; an unknown name raises ``ValueError`` listing the valid ones.

    Example:
        >>> from advlab.data import dataset_info
        >>> dataset_info("cifar10").class_names[:2]
        ('airplane', 'automobile')
    """
    return _DATASETS.get(name).info


def default_data_root() -> Path:
    """The data root used when none is given: ``$ADVLAB_DATA`` if set, else the user cache dir ``/ "data"``.

    Example:
        >>> from advlab.data import default_data_root
        >>> root = default_data_root()  # e.g. ~/.cache/advlab/data on Linux
    """
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("advlab")) / "data"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` as a ``Path`` (``~`` expanded), or :func:`default_data_root` when ``root`` is ``None``."""
    if root is None:
        return default_data_root()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike) or None, got {type(root).__name__}")
    return Path(root).expanduser()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def missing_files_error(
    name: str, root: Path, missing: Sequence[str], *, alternative: str = ""
) -> DatasetNotFoundError:
    """Builds the error raised when files of dataset ``name`` are missing under ``root``.

    Args:
        name: dataset name (used in the ``advlab data fetch NAME`` hint).
        root: the data root that was searched.
        missing: the missing paths, relative to ``root``.
        alternative: an optional sentence naming other files that would also do.
    """
    where = f"data root {root} does not exist" if not root.is_dir() else f"not found under data root {root}"
    lines = [f"dataset {name!r}: {len(missing)} file(s) {where}:"]
    lines += [f"  {root / rel}" for rel in missing]
    if alternative:
        lines.append(alternative)
    lines.append(
        f"Download them with `advlab data fetch {name} --data-root {root}` "
        f"(Python: advlab.data.fetch_dataset({name!r}, root)), or place the official files there by hand. "
        f"(The data root is root= / --data-root, else ${DATA_ENV_VAR}, else the user cache folder.)"
    )
    return DatasetNotFoundError("\n".join(lines))


def dataset_files(name: str, split: str = "train", root: str | os.PathLike[str] | None = None) -> tuple[Path, ...]:
    """The files :func:`load_dataset` would read for ``split``; raises :class:`DatasetNotFoundError` if missing.

    Bundled datasets (``digits``) need no files and return ``()``.

    Example:
        >>> from advlab.data import dataset_files
        >>> dataset_files("digits")
        ()
    """
    entry = _DATASETS.get(name)
    _check_split(split)
    if entry.locate is None:
        return ()
    return entry.locate(resolve_data_root(root), split)


def _fingerprint(files: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in files:
        stat = path.stat()
        out.append((str(path.resolve()), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _load_arrays(
    name: str, split: str, files: tuple[Path, ...], fingerprint: tuple[tuple[str, int, int], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates one split; cached per (name, split, files and their mtimes/sizes)."""
    del fingerprint  # part of the cache key only
    entry = _DATASETS.get(name)
    info = entry.info
    x, y = entry.read(files, split)
    origin = ", ".join(str(f) for f in files) or "bundled data"
    if x.ndim != 4 or tuple(x.shape[1:]) != info.shape:
        raise ValueError(f"{origin}: images have shape {tuple(x.shape)}, expected (N, *{info.shape})")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{origin}: {len(x)} images but labels of shape {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise ValueError(
            f"{origin}: labels span {int(y.min())}..{int(y.max())}, expected 0..{info.num_classes - 1}; "
            f"the file is corrupt, re-fetch it with `advlab data fetch {name}`"
        )
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.size and (not np.isfinite(x).all() or float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError(f"{origin}: pixel values outside [0, 1]")
    y = y.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads one split of a registered dataset as tensors.

    Decoded arrays are cached in-process (keyed by name, split, file paths and mtimes), so a second call
    is cheap; every call returns fresh tensors, so changing them never changes what later calls get.

    Args:
        name: a name from :func:`list_datasets` (``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``).
        split: ``"train"`` or ``"test"``.
        root: folder holding ``mnist/``, ``fashion-mnist/``, ``cifar10/``; default :func:`default_data_root`.
            Ignored for ``digits`` (bundled with scikit-learn).

    Returns:
        ``(x, y)``: ``x`` float32 ``(N, C, H, W)`` in [0, 1], ``y`` int64 ``(N,)`` in ``0 .. num_classes-1``.

    Raises:
        ValueError: unknown name or split, or a corrupt file (the message names it).
        DatasetNotFoundError: the files are not under the data root (a ``FileNotFoundError``).

    Example:
        >>> from advlab.data import load_dataset
        >>> x, y = load_dataset("digits", "test")
        >>> x.shape, x.dtype, y.dtype
        (torch.Size([360, 1, 8, 8]), torch.float32, torch.int64)
    """
    files = dataset_files(name, split, root)
    x, y = _load_arrays(name, split, files, _fingerprint(files))
    if x.dtype == np.uint8:
        xf = np.divide(x, np.float32(255.0), dtype=np.float32)
    else:
        xf = np.array(x, dtype=np.float32, copy=True)
    return torch.from_numpy(xf), torch.from_numpy(np.array(y, dtype=np.int64, copy=True))


def clear_dataset_cache() -> None:
    """Drops the in-process cache of decoded datasets (to free memory)."""
    _load_arrays.cache_clear()
