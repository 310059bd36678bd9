"""Readers for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or plain).

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header, the ``uint32`` magic
``0x0000TTDD`` (``TT = 0x08`` for unsigned bytes, ``DD`` the number of dimensions), then one ``uint32``
size per dimension, then the payload in row-major order. Image files have magic ``0x00000803``
(N, rows, cols), label files ``0x00000801`` (N).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
"""Magic number of an IDX file of unsigned-byte images (3 dimensions)."""

LABELS_MAGIC = 0x00000801
"""Magic number of an IDX file of unsigned-byte labels (1 dimension)."""

_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, problem: str, dataset: str | None) -> ValueError:
    fetch = f"`advlab data fetch {dataset}`" if dataset else "`advlab data fetch NAME`"
    return ValueError(
        f"{path}: {problem}. The file is truncated or corrupt; delete it and re-fetch it with {fetch} "
        "(or put a fresh copy of the official file in its place)."
    )


def _read_bytes(path: Path, dataset: str | None) -> bytes:
    raw = Path(path).read_bytes()
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        if raw[:2] != _GZIP_MAGIC:
            raise _corrupt(path, "not a gzip file (its name ends in .gz)", dataset)
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise _corrupt(path, f"bad gzip data ({err})", dataset) from err
    return raw


def read_idx(path: str | Path, magic: int, *, dataset: str | None = None) -> np.ndarray:
    """Reads an unsigned-byte IDX file, checking its magic number and that the header matches the payload.

    Args:
        path: the file; gzip-compressed when its name ends in ``.gz`` (or its content starts with the gzip magic).
        magic: the expected magic number, :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.
        dataset: dataset name used in the "re-fetch with ``advlab data fetch NAME``" hint of errors.

    Returns:
        A read-only ``uint8`` array with the shape given in the header (e.g. ``(60000, 28, 28)``).

    Raises:
        ValueError: not gzip, bad magic, header truncated, or payload shorter/longer than the header says.

    Example:
        >>> from advlab.data.idx import LABELS_MAGIC, read_idx
        >>> y = read_idx("mnist/t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)  # doctest: +SKIP
    """
    path = Path(path)
    raw = _read_bytes(path, dataset)
    if len(raw) < 4:
        raise _corrupt(path, f"only {len(raw)} bytes, too short for an IDX header", dataset)
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise _corrupt(path, f"bad magic number 0x{got:08x}, expected 0x{magic:08x}", dataset)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, f"header cut short ({len(raw)} of {header} bytes)", dataset)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise _corrupt(path, f"{what}: header says {dims} = {expected} bytes of data, file holds {payload}", dataset)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: str | Path, *, dataset: str | None = None) -> np.ndarray:
    """Reads an IDX image file (magic ``0x00000803``) as ``uint8`` ``(N, rows, cols)``; see :func:`read_idx`."""
    return read_idx(path, IMAGES_MAGIC, dataset=dataset)


def read_idx_labels(path: str | Path, *, dataset: str | None = None) -> np.ndarray:
    """Reads an IDX label file (magic ``0x00000801``) as ``uint8`` ``(N,)``; see :func:`read_idx`."""
    return read_idx(path, LABELS_MAGIC, dataset=dataset)


def read_idx_pair(
    images: Path, labels: Path, *, dataset: str, num_classes: int = 10, size: tuple[int, int] = (28, 28)
) -> tuple[np.ndarray, np.ndarray]:
    """Reads matching image and label IDX files and checks they agree.

    Returns:
        ``x`` ``uint8`` ``(N, 1, rows, cols)`` and ``y`` ``uint8`` ``(N,)``.

    Raises:
        ValueError: a corrupt file, images not of ``size``, counts that differ, or labels out of range.
    """
    x = read_idx_images(images, dataset=dataset)
    y = read_idx_labels(labels, dataset=dataset)
    if tuple(x.shape[1:]) != size:
        raise _corrupt(images, f"images are {x.shape[1]}x{x.shape[2]}, expected {size[0]}x{size[1]}", dataset)
    if len(x) != len(y):
        raise ValueError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; one of them is from another "
            f"release or corrupt, re-fetch both with `advlab data fetch {dataset}`."
        )
    if len(y) and int(y.max()) >= num_classes:
        raise _corrupt(labels, f"label {int(y.max())} out of range 0..{num_classes - 1}", dataset)
    return x.reshape(len(x), 1, *size), y
