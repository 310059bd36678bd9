"""The built-in datasets: ``digits`` (bundled), ``mnist``, ``fashion-mnist`` and ``cifar10``.

The ``mean``/``std`` in each :class:`DatasetInfo` are per-channel statistics of the train split in
[0, 1] units, computed once from the data and checked by the test suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advlab.data._core import DatasetInfo, missing_files_error, register_dataset
from advlab.data.cifar import read_cifar_batch, read_cifar_npz
from advlab.data.idx import read_idx_pair

DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
"""IDX file names per split (images, labels); the uncompressed variants drop the ``.gz``."""

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
"""Official batch files per split, inside ``<root>/cifar10/cifar-10-batches-py/``."""

CIFAR10_SUBSET = "cifar10-subset.npz"
"""Fallback archive in ``<root>/cifar10/`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# --------------------------------------------------------------------------------------------- digits


@register_dataset(
    DatasetInfo(
        name="digits",
        shape=(1, 8, 8),
        num_classes=10,
        class_names=DIGIT_NAMES,
        mean=(0.3054,),
        std=(0.3761,),
        files=(),
        description="8x8 handwritten digits bundled with scikit-learn (1,797 images; 1,437 train / 360 test)",
        citation="E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI ML Repository, 1998",
    )
)
def _read_digits(files: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``load_digits`` scaled by 1/16, split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]


# ---------------------------------------------------------------------------------- MNIST / Fashion


def _locate_idx(name: str, root: Path, split: str) -> tuple[Path, ...]:
    folder = root / name
    found: list[Path] = []
    missing: list[str] = []
    for filename in IDX_FILES[split]:
        gz, plain = folder / filename, folder / filename.removesuffix(".gz")
        if gz.is_file():
            found.append(gz)
        elif plain.is_file():
            found.append(plain)
        else:
            missing.append(f"{name}/{filename}")
    if missing:
        raise missing_files_error(
            name, root, missing, alternative="(Uncompressed copies without the .gz suffix are accepted too.)"
        )
    return tuple(found)


def _idx_dataset(info: DatasetInfo) -> None:
    name = info.name

    def locate(root: Path, split: str) -> tuple[Path, ...]:
        return _locate_idx(name, root, split)

    @register_dataset(info, locate=locate)
    def _read(files: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = files
        return read_idx_pair(images, labels, dataset=name, num_classes=info.num_classes)


_idx_dataset(
    DatasetInfo(
        name="mnist",
        shape=(1, 28, 28),
        num_classes=10,
        class_names=DIGIT_NAMES,
        mean=(0.1307,),
        std=(0.3081,),
        files=tuple(f"mnist/{f}" for split in ("train", "test") for f in IDX_FILES[split]),
        description="MNIST handwritten digits, 28x28 grayscale (60,000 train / 10,000 test)",
        citation=(
            "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, Gradient-based learning applied to document "
            "recognition, Proc. IEEE 86(11), 1998"
        ),
    )
)

_idx_dataset(
    DatasetInfo(
        name="fashion-mnist",
        shape=(1, 28, 28),
        num_classes=10,
        class_names=FASHION_NAMES,
        mean=(0.2860,),
        std=(0.3530,),
        files=tuple(f"fashion-mnist/{f}" for split in ("train", "test") for f in IDX_FILES[split]),
        description="Zalando's Fashion-MNIST clothing images, 28x28 grayscale (60,000 train / 10,000 test)",
        citation=(
            "H. Xiao, K. Rasul, R. Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine "
            "Learning Algorithms, arXiv:1708.07747, 2017"
        ),
    )
)

# ------------------------------------------------------------------------------------------- CIFAR-10


def _locate_cifar10(root: Path, split: str) -> tuple[Path, ...]:
    folder = root / "cifar10"
    batches = folder / CIFAR10_FOLDER
    wanted = [batches / f for f in CIFAR10_BATCHES[split]]
    if all(p.is_file() for p in wanted):
        return tuple(wanted)
    any_batch = any((batches / f).is_file() for names in CIFAR10_BATCHES.values() for f in names)
    subset = folder / CIFAR10_SUBSET
    if not any_batch and subset.is_file():
        return (subset,)
    missing = [f"cifar10/{CIFAR10_FOLDER}/{p.name}" for p in wanted if not p.is_file()]
    raise missing_files_error(
        "cifar10",
        root,
        missing,
        alternative=(
            "(These come from the official cifar-10-python.tar.gz. Without any of them, an .npz subset "
            f"{folder / CIFAR10_SUBSET} holding x_train, y_train, x_test, y_test is used instead.)"
        ),
    )


@register_dataset(
    DatasetInfo(
        name="cifar10",
        shape=(3, 32, 32),
        num_classes=10,
        class_names=CIFAR10_NAMES,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        files=tuple(f"cifar10/{CIFAR10_FOLDER}/{f}" for split in ("train", "test") for f in CIFAR10_BATCHES[split]),
        description=(
            "CIFAR-10 natural images, 32x32 RGB (50,000 train / 10,000 test); "
            f"falls back to cifar10/{CIFAR10_SUBSET} when the official batches are absent"
        ),
        citation="A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, 2009",
    ),
    locate=_locate_cifar10,
)
def _read_cifar10(files: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    if len(files) == 1 and files[0].suffix == ".npz":
        return read_cifar_npz(files[0], split)
    parts = [read_cifar_batch(f) for f in files]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
