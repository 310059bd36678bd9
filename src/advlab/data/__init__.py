"""Datasets: a registry of image-classification datasets loaded as float32 NCHW tensors in [0, 1].

Built in: ``digits`` (scikit-learn's bundled 8x8 digits, needs no files, the default), ``mnist``,
``fashion-mnist`` (official IDX files) and ``cifar10`` (official python batches, or an ``.npz`` subset).
Files live under a data root: ``root=`` / ``--data-root``, else ``$ADVLAB_DATA``, else the user cache
folder; it holds ``mnist/``, ``fashion-mnist/`` and ``cifar10/``. ``advlab data fetch NAME`` downloads them.

Example:
    >>> from advlab.data import load_dataset, dataset_info
    >>> x, y = load_dataset("digits", "train")
    >>> tuple(x.shape[1:]) == dataset_info("digits").shape
    True
"""

from __future__ import annotations

from advlab.data import datasets as _datasets  # registers the built-in datasets
from advlab.data._core import (
    DATA_ENV_VAR,
    SPLITS,
    DatasetInfo,
    DatasetNotFoundError,
    clear_dataset_cache,
    dataset_files,
    dataset_info,
    default_data_root,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
)
from advlab.data.fetch import SOURCES, ChecksumError, DownloadError, fetch_dataset

del _datasets

__all__ = [
    "DATA_ENV_VAR",
    "SOURCES",
    "SPLITS",
    "ChecksumError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DownloadError",
    "clear_dataset_cache",
    "dataset_files",
    "dataset_info",
    "default_data_root",
    "fetch_dataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_data_root",
]
