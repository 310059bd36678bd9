"""Tests of advlab.data: registry, real-data loaders, corrupt-file handling, safe unpickling, fetch, CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import advlab.data.fetch as fetch_mod
from advlab.cli.data_cmd import COMMANDS, data_group
from advlab.data import (
    SOURCES,
    ChecksumError,
    DatasetInfo,
    DatasetNotFoundError,
    DownloadError,
    dataset_files,
    dataset_info,
    default_data_root,
    fetch_dataset,
    list_datasets,
    load_dataset,
)
from advlab.data.cifar import read_cifar_batch, read_cifar_meta, safe_unpickle
from advlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# ------------------------------------------------------------------------------------------ helpers


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def _write_idx_set(folder: Path, n: int = 5, seed: int = 0, compress: bool = True) -> tuple[np.ndarray, ...]:
    """Writes a tiny valid MNIST-format train+test set; returns (x_train, y_train, x_test, y_test) uint8."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, arr, magic in zip(IDX_NAMES[split], (x, y), (IMAGES_MAGIC, LABELS_MAGIC), strict=True):
            raw = _idx_bytes(arr, magic)
            if compress:
                (folder / name).write_bytes(gzip.compress(raw))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(raw)
        out += [x, y]
    return tuple(out)


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A protocol-2 pickle laid out as Python 2 + numpy wrote the official CIFAR-10 batches.

    Strings are Python 2 ``str`` (BINSTRING opcodes) and the array is rebuilt by
    ``numpy.core.multiarray._reconstruct`` + ``ndarray.__setstate__`` with its raw bytes as a ``str``.
    """

    def s(text: bytes) -> bytes:  # py2 str
        return b"T" + struct.pack("<I", len(text)) + text

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    parts = [b"\x80\x02}(", s(b"batch_label"), s(b"testing batch 1 of 5"), s(b"data")]
    parts += [b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", i(0), b"\x85", s(b"b"), b"\x87R"]
    parts += [b"(", i(1), i(data.shape[0]), i(data.shape[1]), b"\x86"]
    parts += [b"cnumpy\ndtype\n", s(b"u1"), i(0), i(1), b"\x87R"]
    parts += [b"(", i(3), s(b"|"), b"NNN", i(-1), i(-1), i(0), b"tb", b"\x89", s(data.tobytes()), b"tb"]
    parts += [s(b"labels"), b"](", *[i(v) for v in labels], b"e"]
    parts += [s(b"filenames"), b"](", *[s(f"img_{k}.png".encode()) for k in range(len(labels))], b"e"]
    parts += [b"u."]
    return b"".join(parts)


def _write_cifar_batches(folder: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    batches = folder / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in sizes.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        (batches / name).write_bytes(_py2_batch(data, labels))
        out[name] = (data, labels)
    return out


class _Evil:
    """Unpickling this object would run ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_the_four_datasets() -> None:
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist"]
    import advlab

    assert advlab.list_datasets() == list_datasets()


@pytest.mark.parametrize("name", list_datasets())
def test_dataset_info_is_consistent(name: str) -> None:
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo)
    assert info.name == name
    channels = info.shape[0]
    assert len(info.mean) == len(info.std) == channels
    assert len(info.class_names) == info.num_classes == len(set(info.class_names))
    assert all(0 < m < 1 and 0 < s < 1 for m, s in zip(info.mean, info.std, strict=True))
    assert all(not Path(f).is_absolute() and f.startswith(f"{name}/") for f in info.files)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10, digits, fashion-mnist, mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"valid names"):
        dataset_info("svhn")


def test_unknown_split_lists_valid_splits() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*train, test"):
        load_dataset("digits", "validation")


def test_bad_root_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"root must be a path"):
        load_dataset("mnist", "train", root=42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ digits


def test_digits_split_is_deterministic_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    # same data again, bit for bit
    x_tr2, y_tr2 = load_dataset("digits", "train")
    assert torch.equal(x_tr, x_tr2) and torch.equal(y_tr, y_tr2)
    # train + test is a partition of the 1,797 bundled images (as a multiset of rows)
    full = load_digits()
    rows = np.concatenate([x_tr.reshape(-1, 64).numpy(), x_te.reshape(-1, 64).numpy()]) * 16
    labels = np.concatenate([y_tr.numpy(), y_te.numpy()])
    ours = sorted(zip(map(bytes, rows.astype(np.uint8)), labels.tolist(), strict=True))
    ref = sorted(zip(map(bytes, full.data.astype(np.uint8)), full.target.tolist(), strict=True))
    assert ours == ref
    # stratified: every class is 20% (+-1) in test
    counts = np.bincount(full.target, minlength=10)
    assert np.all(np.abs(np.bincount(y_te.numpy(), minlength=10) - 0.2 * counts) <= 1)


def test_returned_tensors_do_not_alias_the_cache() -> None:
    x, y = load_dataset("digits", "test")
    expected_x, expected_y = x.clone(), y.clone()
    x.add_(5.0)
    y.fill_(3)
    x2, y2 = load_dataset("digits", "test")
    assert torch.equal(x2, expected_x) and torch.equal(y2, expected_y)


def test_digits_needs_no_files(tmp_path: Path) -> None:
    x, _ = load_dataset("digits", "test", root=tmp_path / "nowhere")
    assert len(x) == 360
    assert dataset_files("digits") == ()


@pytest.mark.parametrize("name", list_datasets())
def test_mean_std_of_info_match_the_train_split(name: str, shared_data_root: Path) -> None:
    x, _ = load_dataset(name, "train", root=shared_data_root)
    info = dataset_info(name)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), correction=0)
    # cifar10 holds the full training set's statistics; only the 4,000-image subset is available here
    tol = 5e-3 if name == "cifar10" and dataset_files(name, "train", shared_data_root)[0].suffix == ".npz" else 1e-4
    assert mean.tolist() == pytest.approx(info.mean, abs=tol)
    assert std.tolist() == pytest.approx(info.std, abs=tol)


# ------------------------------------------------------------------------------- MNIST / Fashion


MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
FASHION_COUNTS = {"train": [6000] * 10, "test": [1000] * 10}


@pytest.mark.parametrize(
    ("name", "counts"), [("mnist", MNIST_COUNTS), ("fashion-mnist", FASHION_COUNTS)], ids=["mnist", "fashion"]
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_idx_data(name: str, counts: dict, split: str, shared_data_root: Path) -> None:
    x, y = load_dataset(name, split, root=shared_data_root)
    n = 60_000 if split == "train" else 10_000
    assert x.shape == (n, 1, 28, 28) and y.shape == (n,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y, minlength=10).tolist() == counts[split]
    # values are exactly k/255
    sample = x[:50] * 255
    assert torch.equal(sample, sample.round())


def test_mnist_first_labels_and_pixels(shared_data_root: Path) -> None:
    x, y = load_dataset("mnist", "train", root=shared_data_root)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known start of the training set
    assert torch.all(x[:, :, 0, 0] == 0)  # corners are background
    _, yt = load_dataset("mnist", "test", root=shared_data_root)
    assert yt[:5].tolist() == [7, 2, 1, 0, 4]


def test_uncompressed_idx_files_are_accepted(tmp_path: Path) -> None:
    x_tr, y_tr, _, _ = _write_idx_set(tmp_path / "mnist", n=7, compress=False)
    x, y = load_dataset("mnist", "train", root=tmp_path)
    assert torch.equal(x[:, 0], torch.from_numpy(x_tr).float() / 255)
    assert y.tolist() == y_tr.tolist()


def test_cache_sees_a_rewritten_file(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "mnist", n=4, seed=1)
    x1, _ = load_dataset("mnist", "test", root=tmp_path)
    _, _, x_te, _ = _write_idx_set(tmp_path / "mnist", n=4, seed=2)
    future = time.time_ns() + 10**9
    for f in (tmp_path / "mnist").iterdir():
        os.utime(f, ns=(future, future))
    x2, _ = load_dataset("mnist", "test", root=tmp_path)
    assert not torch.equal(x1, x2)
    assert torch.equal(x2[:, 0], torch.from_numpy(x_te).float() / 255)


def _corrupt_bad_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[3] = 0x02
    path.write_bytes(gzip.compress(bytes(raw)))


def _corrupt_short_payload(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))


def _corrupt_not_gzip(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain bytes under a .gz name


def _corrupt_cut_gzip(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 40)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_bad_magic, "bad magic number 0x00000802, expected 0x00000803"),
        (_corrupt_short_payload, "truncated"),
        (_corrupt_not_gzip, "not a gzip file"),
        (_corrupt_cut_gzip, "bad gzip data"),
        (_corrupt_garbage, "bad gzip data"),
    ],
    ids=["bad-magic", "short-payload", "not-gzip", "cut-gzip", "garbage"],
)
def test_corrupt_idx_is_a_clear_value_error(tmp_path: Path, corrupt, message: str) -> None:
    _write_idx_set(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    corrupt(bad)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("mnist", "train", root=tmp_path)
    text = str(info.value)
    assert str(bad) in text and "advlab data fetch mnist" in text


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "fashion-mnist", n=6)
    labels = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(5, np.uint8), LABELS_MAGIC)))
    with pytest.raises(ValueError, match=r"6 images but .*5 labels.*advlab data fetch fashion-mnist"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "mnist", n=3)
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.array([1, 12, 3], np.uint8), LABELS_MAGIC)))
    with pytest.raises(ValueError, match=r"label 12 out of range"):
        load_dataset("mnist", "test", root=tmp_path)


def test_missing_data_root_names_files_and_fetch(tmp_path: Path) -> None:
    root = tmp_path / "no-such-root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", root=root)
    assert isinstance(info.value, FileNotFoundError)
    text = str(info.value)
    assert "does not exist" in text
    assert str(root / "mnist" / "train-images-idx3-ubyte.gz") in text
    assert "train-labels-idx1-ubyte.gz" in text and "t10k" not in text.split("Download")[0]
    assert f"advlab data fetch mnist --data-root {root}" in text


def test_partially_missing_files_are_listed(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)1 file\(s\) not found.*t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path)
    assert len(load_dataset("mnist", "train", root=tmp_path)[0]) == 5  # the train split is complete


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    _write_idx_set(tmp_path / "mnist", n=3)
    assert load_dataset("mnist", "test")[0].shape == (3, 1, 28, 28)
    monkeypatch.delenv("ADVLAB_DATA")
    assert default_data_root().name == "data" and "advlab" in str(default_data_root())


# ---------------------------------------------------------------------------------------- CIFAR-10

CIFAR_SUBSET_COUNTS = {
    "train": [396, 366, 420, 384, 422, 393, 414, 385, 407, 413],
    "test": [103, 89, 100, 103, 90, 86, 112, 102, 106, 109],
}


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_subset(split: str, shared_data_root: Path) -> None:
    x, y = load_dataset("cifar10", split, root=shared_data_root)
    n = 4000 if split == "train" else 1000
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.bincount(y, minlength=10).tolist() == CIFAR_SUBSET_COUNTS[split]
    if split == "train":
        assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official data_batch_1 order


def test_cifar10_class_names_match_batches_meta(shared_data_root: Path) -> None:
    names = read_cifar_meta(shared_data_root / "cifar10" / "batches.meta")
    assert tuple(names) == dataset_info("cifar10").class_names


def test_py2_batch_layout_matches_numpy_reference() -> None:
    """The helper's pickle is what numpy itself reads back; the safe reader agrees with it exactly."""
    data = np.random.default_rng(0).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    blob = _py2_batch(data, [1, 2, 3, 4])
    trusted = pickle.loads(blob, encoding="latin1")  # our own bytes: fine to unpickle normally here
    assert np.array_equal(trusted["data"], data) and trusted["labels"] == [1, 2, 3, 4]
    ours = safe_unpickle(blob)
    assert np.array_equal(ours["data"], data) and ours["labels"] == [1, 2, 3, 4]
    assert ours["filenames"][0] == "img_0.png"


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_safe_unpickle_reads_python3_pickles_of_plain_arrays(protocol: int) -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    blob = pickle.dumps({b"data": arr, "labels": [0, 1], "name": b"x"}, protocol=protocol)
    out = safe_unpickle(blob)
    assert np.array_equal(out[b"data"], arr) and out[b"data"].dtype == np.int32
    assert out["labels"] == [0, 1] and out["name"] == b"x"


def test_safe_unpickle_refuses_object_arrays() -> None:
    blob = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(blob)


def test_full_batches_are_preferred_over_the_subset(tmp_path: Path, shared_data_root: Path) -> None:
    sizes = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 1, "data_batch_4": 2, "data_batch_5": 1}
    written = _write_cifar_batches(tmp_path, {**sizes, "test_batch": 4})
    (tmp_path / "cifar10" / "cifar10-subset.npz").symlink_to(shared_data_root / "cifar10" / "cifar10-subset.npz")
    x, y = load_dataset("cifar10", "train", root=tmp_path)
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = [v for i in range(1, 6) for v in written[f"data_batch_{i}"][1]]
    assert x.shape == (9, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(data.reshape(9, 3, 32, 32)).float() / 255)
    assert y.tolist() == labels
    xt, _ = load_dataset("cifar10", "test", root=tmp_path)
    # channel planes: first 1024 values of a row are red, row-major
    assert torch.equal(xt[0, 0].flatten() * 255, torch.from_numpy(written["test_batch"][0][0, :1024]).float())


def test_partial_batches_are_an_error_not_a_silent_subset(tmp_path: Path, shared_data_root: Path) -> None:
    _write_cifar_batches(tmp_path, {"data_batch_1": 2, "test_batch": 2})
    (tmp_path / "cifar10" / "cifar10-subset.npz").symlink_to(shared_data_root / "cifar10" / "cifar10-subset.npz")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)data_batch_2.*advlab data fetch cifar10"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert len(load_dataset("cifar10", "test", root=tmp_path)[0]) == 2


def test_malicious_pickle_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _write_cifar_batches(tmp_path, {name: 1 for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]})
    bad = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"refused to load global posix.system") as info:
        load_dataset("cifar10", "train", root=tmp_path)
    assert str(bad) in str(info.value) and "advlab data fetch cifar10" in str(info.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"refused"):
        read_cifar_batch(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        pickle.dumps(os.system, protocol=4),
        pickle.dumps(np.float64(1.5)),  # a numpy scalar needs numpy.core.multiarray.scalar: refused
    ],
    ids=["eval", "stack-global", "numpy-scalar"],
)
def test_safe_unpickle_refuses_globals(payload: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load global"):
        safe_unpickle(payload)


def test_cifar_batch_truncated(tmp_path: Path) -> None:
    _write_cifar_batches(tmp_path, {"test_batch": 3})
    bad = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"test_batch.*could not unpickle"):
        read_cifar_batch(bad)


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10-subset.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"cifar10-subset.npz.*advlab data fetch cifar10"):
        load_dataset("cifar10", "test", root=tmp_path)


# -------------------------------------------------------------------------------------------- fetch


def test_fetch_offline_fails_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = SOURCES["mnist"]
    monkeypatch.setitem(SOURCES, "mnist", fetch_mod.Source(src.folder, ("http://127.0.0.1:9/",), src.files))
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_dataset("mnist", tmp_path, timeout=3.0)
    assert time.monotonic() - start < 5.0
    text = str(info.value)
    assert "offline" in text and str(tmp_path / "mnist") in text
    for remote in src.files:
        assert remote.name in text and remote.md5 in text
    assert isinstance(info.value, ConnectionError)
    assert not list((tmp_path / "mnist").glob("*"))


def test_fetch_verifies_md5_against_real_files(tmp_path: Path, shared_data_root: Path) -> None:
    mirror = (shared_data_root / "mnist").as_uri() + "/"
    lines: list[str] = []
    target = fetch_dataset("mnist", tmp_path, mirrors=[mirror], log=lines.append)
    assert target == tmp_path / "mnist"
    for remote in SOURCES["mnist"].files:
        assert hashlib.md5((target / remote.name).read_bytes()).hexdigest() == remote.md5
    assert not list(target.glob("*.part"))
    assert load_dataset("mnist", "test", root=tmp_path)[0].shape == (10_000, 1, 28, 28)
    # second run: everything present and verified, nothing downloaded (the mirror is gone)
    lines.clear()
    fetch_dataset("mnist", tmp_path, mirrors=["http://127.0.0.1:9/"], log=lines.append)
    assert all("present, MD5 verified" in line for line in lines) and len(lines) == 4


def test_fetch_detects_md5_mismatch(tmp_path: Path, shared_data_root: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for remote in SOURCES["fashion-mnist"].files:
        (mirror / remote.name).write_bytes(b"not the real file")
    target = tmp_path / "root"
    with pytest.raises(ChecksumError, match=r"MD5 mismatch.*train-images-idx3-ubyte.gz.*expected 8d4fb7e6"):
        fetch_dataset("fashion-mnist", target, mirrors=[mirror.as_uri()])
    folder = target / "fashion-mnist"
    assert not (folder / "train-images-idx3-ubyte.gz").exists()
    assert not list(folder.glob(".*part"))


def test_fetch_replaces_a_corrupt_present_file(tmp_path: Path, shared_data_root: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    fetch_dataset("mnist", tmp_path, mirrors=[(shared_data_root / "mnist").as_uri()])
    assert hashlib.md5((folder / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest() == (
        "ec29112dd5afa0611ce80d1b7f02629c"
    )


def _tar_gz(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, link in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_cifar_source(mirror: Path, archive_md5: str, contents: dict[str, bytes]) -> fetch_mod.Source:
    return fetch_mod.Source(
        folder="cifar10",
        mirrors=(mirror.as_uri() + "/",),
        files=(fetch_mod.RemoteFile("cifar-10-python.tar.gz", archive_md5),),
        extract=tuple(fetch_mod.RemoteFile(name, hashlib.md5(data).hexdigest()) for name, data in contents.items()),
    )


def test_fetch_cifar_extracts_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    contents = {
        f"cifar-10-batches-py/{n}": _py2_batch(rng.integers(0, 256, (2, 3072), dtype=np.uint8), [1, 2]) for n in names
    }
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive_md5 = _tar_gz(mirror / "cifar-10-python.tar.gz", {**contents, "cifar-10-batches-py/readme.html": b"<html>"})
    monkeypatch.setitem(SOURCES, "cifar10", _fake_cifar_source(mirror, archive_md5, contents))
    root = tmp_path / "root"
    target = fetch_dataset("cifar10", root)
    assert sorted(p.name for p in (target / "cifar-10-batches-py").iterdir()) == sorted(names)
    assert not (target / "cifar-10-python.tar.gz").exists()  # archive removed after unpacking
    x, y = load_dataset("cifar10", "train", root=root)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [1, 2] * 5


@pytest.mark.parametrize(
    ("members", "symlinks", "message"),
    [
        ({"cifar-10-batches-py/../../evil": b"x"}, None, "leaves the target folder"),
        ({"/tmp/evil-abs": b"x"}, None, "leaves the target folder"),
        ({}, {"cifar-10-batches-py/data_batch_1": "/etc/passwd"}, "link or a special file"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_fetch_refuses_unsafe_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict, symlinks: dict | None, message: str
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive_md5 = _tar_gz(mirror / "cifar-10-python.tar.gz", members, symlinks)
    wanted = {"cifar-10-batches-py/data_batch_1": b"x"}
    monkeypatch.setitem(SOURCES, "cifar10", _fake_cifar_source(mirror, archive_md5, wanted))
    root = tmp_path / "a" / "root"
    with pytest.raises(ValueError, match=message):
        fetch_dataset("cifar10", root)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (root / "cifar10" / "cifar-10-batches-py" / "data_batch_1").exists()


def test_fetch_digits_is_a_no_op(tmp_path: Path) -> None:
    assert fetch_dataset("digits", tmp_path) == tmp_path
    assert not tmp_path.joinpath("digits").exists()


def test_fetch_rejects_unknown_names_and_bad_timeouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"valid names"):
        fetch_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"timeout \(seconds\) must be > 0, got 0"):
        fetch_dataset("mnist", tmp_path, timeout=0)
    with pytest.raises(TypeError, match=r"timeout \(seconds\) must be a number, got str '5'"):
        fetch_dataset("mnist", tmp_path, timeout="5")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_data_list(shared_data_root: Path, tmp_path: Path) -> None:
    assert data_group in COMMANDS
    runner = CliRunner()
    result = runner.invoke(data_group, ["list", "--data-root", str(shared_data_root)])
    assert result.exit_code == 0, result.output
    status = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(status) == {"cifar10", "digits", "fashion-mnist", "mnist"}
    assert "bundled" in status["digits"] and "1x8x8" in status["digits"]
    assert "present" in status["mnist"] and "present" in status["fashion-mnist"]
    assert "subset" in status["cifar10"] and "3x32x32" in status["cifar10"]

    result = runner.invoke(data_group, ["list", "--json", "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["datasets"]}
    assert rows["mnist"]["status"] == "missing" and rows["digits"]["status"] == "bundled"
    assert rows["fashion-mnist"]["classes"][0] == "T-shirt/top"


def test_cli_data_fetch(tmp_path: Path, shared_data_root: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        data_group, ["fetch", "mnist", "--data-root", str(tmp_path), "--mirror", "http://127.0.0.1:9/"]
    )
    assert result.exit_code == 1
    assert "place them in" in result.output and str(tmp_path / "mnist") in result.output
    result = runner.invoke(
        data_group,
        ["fetch", "mnist", "--data-root", str(tmp_path), "--mirror", (shared_data_root / "mnist").as_uri()],
    )
    assert result.exit_code == 0, result.output
    assert f"ready in {tmp_path / 'mnist'}" in result.output
    result = runner.invoke(data_group, ["fetch", "svhn"])
    assert result.exit_code == 2 and "svhn" in result.output


def test_register_dataset_validates_info() -> None:
    from advlab.data import register_dataset

    bad = DatasetInfo("bad-toy", (1, 2, 2), 3, ("a", "b"), (0.5,), (0.5,), ())
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        register_dataset(bad)
    with pytest.raises(ValueError, match="one value per channel"):
        register_dataset(DatasetInfo("bad-toy", (3, 2, 2), 1, ("a",), (0.5,), (0.5,), ()))
    with pytest.raises(ValueError, match=r"DatasetInfo 'bad-toy': shape\[1\] must be an integer >= 1, got 0"):
        register_dataset(DatasetInfo("bad-toy", (1, 0, 2), 1, ("a",), (0.5,), (0.5,), ()))
    with pytest.raises(TypeError, match=r"DatasetInfo 'bad-toy': shape\[2\] must be an integer, got float"):
        register_dataset(DatasetInfo("bad-toy", (1, 2, 2.0), 1, ("a",), (0.5,), (0.5,), ()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(dataset_info("mnist"))(lambda files, split: (np.zeros(1), np.zeros(1)))
    assert "bad-toy" not in list_datasets()
