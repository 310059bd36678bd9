"""Readers for CIFAR-10: the official python batches (read without running code) and ``.npz`` archives.

The official ``cifar-10-python.tar.gz`` (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
holds Python 2 pickles: dicts of strings, lists and one ``uint8`` numpy array ``data`` of shape
``(N, 3072)`` (1024 red, then green, then blue values per image, rows top to bottom). Pickles can run
arbitrary code, so :func:`safe_unpickle` uses an unpickler that resolves no global at all except a
handful of stand-ins that rebuild plain numeric numpy arrays from raw bytes: a stranger's file can
neither import nor call anything.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_NUMERIC_DTYPES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"})
_BYTE_ORDERS = frozenset({"<", ">", "|", "="})


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


_NDARRAY = _NdarrayType()


class _Dtype:
    """Stand-in for ``numpy.dtype(name)``: records a plain numeric type and its byte order."""

    def __init__(self, name: Any, align: Any = 0, copy: Any = 0) -> None:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if not isinstance(name, str) or name not in _NUMERIC_DTYPES:
            raise pickle.UnpicklingError(f"dtype {name!r} is not a plain numeric type")
        self.name = name
        self.order = "|" if name in {"b1", "i1", "u1"} else "<"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed dtype state")
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in _BYTE_ORDERS or any(field is not None for field in state[2:5]):
            raise pickle.UnpicklingError("only plain numeric dtypes are accepted")
        self.order = order

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.order + self.name)


class _Array:
    """Stand-in for an ndarray under reconstruction; :meth:`__setstate__` builds it from raw bytes."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed ndarray state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _Dtype):
            raise pickle.UnpicklingError("ndarray without a plain numeric dtype")
        if isinstance(raw, str):  # a Python 2 str read with encoding="latin1"
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray data must be raw bytes (object arrays are refused)")
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"bad ndarray shape {shape!r}")
        np_dtype = dtype.to_numpy()
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize:
            raise pickle.UnpicklingError(f"ndarray data has {len(raw)} bytes, shape {shape} needs more or less")
        flat = np.frombuffer(bytes(raw), dtype=np_dtype)
        self.value = flat.reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy.ndarray objects are accepted")
    return _Array()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is accepted")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves no real global: only the stand-ins in ``_ALLOWED``; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: only dicts, lists, strings, numbers and plain "
                "numeric numpy arrays are accepted"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not accepted")


def _unwrap(obj: Any, depth: int = 0) -> Any:
    if depth > 16:
        raise pickle.UnpicklingError("nesting too deep")
    if isinstance(obj, _Array):
        if obj.value is None:
            raise pickle.UnpicklingError("ndarray without data")
        return obj.value
    if isinstance(obj, (_Dtype, _NdarrayType)):
        raise pickle.UnpicklingError("stray numpy type object")
    if isinstance(obj, dict):
        return {_unwrap(k, depth + 1): _unwrap(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unwrap(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(v, depth + 1) for v in obj)
    return obj


def safe_unpickle(data: bytes) -> Any:
    """Unpickles ``data`` without resolving any real global, so it cannot import or run code.

    Accepts what the official CIFAR batches hold (Python 2 pickles of dicts, lists, strings, numbers and
    plain numeric numpy arrays); Python 2 strings are decoded as latin-1. Anything else raises
    ``pickle.UnpicklingError``.

    Example:
        >>> from advlab.data.cifar import safe_unpickle
        >>> safe_unpickle(b"\\x80\\x02}q\\x00U\\x01aK\\x01s.")
        {'a': 1}
    """
    return _unwrap(_RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load())


def _refetch(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path}: {problem}. The file is corrupt or not an official CIFAR-10 file; delete it and re-fetch it "
        "with `advlab data fetch cifar10`."
    )


def _load_pickle_dict(path: Path) -> dict[str, Any]:
    try:
        obj = safe_unpickle(Path(path).read_bytes())
    except pickle.UnpicklingError as err:
        raise _refetch(path, f"refused or could not unpickle it ({err})") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        raise _refetch(path, f"could not unpickle it ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise _refetch(path, f"holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one official CIFAR-10 python batch (``data_batch_N`` / ``test_batch``) without running code.

    Returns:
        ``x`` ``uint8`` ``(N, 3, 32, 32)`` (channels R, G, B) and ``y`` ``int64`` ``(N,)``.

    Raises:
        ValueError: a corrupt file, or a pickle that asks for anything but plain data (never executed).

    Example:
        >>> from advlab.data.cifar import read_cifar_batch
        >>> x, y = read_cifar_batch("cifar10/cifar-10-batches-py/test_batch")  # doctest: +SKIP
    """
    path = Path(path)
    batch = _load_pickle_dict(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _refetch(path, "no uint8 'data' array of shape (N, 3072)")
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(data):
        raise _refetch(path, f"'labels' does not hold one label per image ({len(data)} images)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise _refetch(path, "'labels' are not integers") from err
    return data.reshape(len(data), 3, 32, 32), y


def read_cifar_meta(path: str | Path) -> list[str]:
    """Reads the class names (``label_names``) from an official ``batches.meta`` without running code.

    Example:
        >>> from advlab.data.cifar import read_cifar_meta
        >>> read_cifar_meta("cifar10/batches.meta")[:3]  # doctest: +SKIP
        ['airplane', 'automobile', 'bird']
    """
    path = Path(path)
    meta = _load_pickle_dict(path)
    names = meta.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise _refetch(path, "no 'label_names' list of strings")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_cifar_npz(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``x_<split>`` (``uint8`` ``(N, 3, 32, 32)``) and ``y_<split>`` from an ``.npz`` (never unpickles).

    Example:
        >>> from advlab.data.cifar import read_cifar_npz
        >>> x, y = read_cifar_npz("cifar10/cifar10-subset.npz", "test")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            x, y = archive[f"x_{split}"], archive[f"y_{split}"]
    except KeyError as err:
        raise _refetch(path, f"no arrays x_{split} / y_{split} in it") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _refetch(path, f"not a readable .npz ({err})") from err
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
        raise _refetch(path, f"x_{split} is {x.dtype} {x.shape}, expected uint8 (N, 3, 32, 32)")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise _refetch(path, f"y_{split} is {y.dtype} {y.shape}, expected {len(x)} integer labels")
    return x, y
