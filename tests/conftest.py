"""Shared fixtures: one intra-op thread, the real data beside the checkout and small trained models (cached
between runs, keyed by the code and settings that train them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The code that decides a cached model's weights: a change to any of it retrains.
_TRAINING_CODE = ("train", "models")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after: tiny models gain nothing from more, on a loaded
    machine several spinning threads per process slow training down many times over, and float sums split
    over threads differ from run to run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0, num_classes: int = 4) -> torch.nn.Module:
    """A small CNN for ``(N, 1, 6, 6)`` inputs with BatchNorm and dropout (so train and eval mode differ), fixed
    weights and BatchNorm statistics from ``seed``, inside a ``Classifier`` that normalises (mean 0.5, std 0.3).
    A plain builder (``from conftest import tiny_cnn``) so that hypothesis tests and helpers can call it."""
    from torch import nn

    from advlab.models import Classifier

    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, num_classes)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
        bn = net[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return Classifier(net, bounds=bounds, mean=[0.5], std=[0.3])


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout (MNIST, Fashion-MNIST, CIFAR-10 subset); skips when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _code_hash() -> str:
    """SHA-256 over the paths and bytes of every module of ``advlab.train`` and ``advlab.models`` (as imported)."""
    import advlab

    src = Path(advlab.__file__).resolve().parent
    digest = hashlib.sha256()
    for package in _TRAINING_CODE:
        for path in sorted((src / package).rglob("*.py")):
            data = path.read_bytes()
            digest.update(f"{path.relative_to(src).as_posix()}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def _trained(
    request: pytest.FixtureRequest,
    name: str,
    model_name: str,
    dataset: str,
    root: Path | None,
    n_train: int | None,
    epochs: int,
) -> torch.nn.Module:
    """``model_name`` trained with :func:`advlab.train.train_model` (Adam, lr 1e-3, batch 128, seed 0, one
    thread) on ``n_train`` random training examples, cached in pytest's cache under a key hashed from the
    training code and these settings, so a change to either retrains."""
    from advlab.models import load_checkpoint
    from advlab.train import Recipe, save_run, train_model

    recipe = Recipe(epochs=epochs, lr=1e-3, batch_size=128)
    settings = {
        "model": model_name, "dataset": dataset, "n_train": n_train, "recipe": recipe.to_dict(), "seed": 0,
        "threads": 1, "torch": torch.__version__, "code": _code_hash(),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(request.config.cache.mkdir("advlab-models")) / f"{name}-{key}"
    if (cache_dir / "model.json").exists():
        try:
            return load_checkpoint(cache_dir)
        except (ValueError, OSError):
            pass  # damaged: retrain
    run = train_model(model_name, dataset, recipe, seed=0, data_root=root, n_train=n_train, threads=1)
    save_run(run, cache_dir, overwrite=True)  # replaces a damaged cache entry
    return load_checkpoint(cache_dir)


@pytest.fixture(scope="session")
def mnist_test(shared_data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test split (10,000 examples)."""
    from advlab.data import load_dataset

    return load_dataset("mnist", "test", root=shared_data_root)


@pytest.fixture(scope="session")
def mnist_cnn(request: pytest.FixtureRequest, shared_data_root: Path) -> torch.nn.Module:
    """``cnn-small`` trained on 12,000 MNIST images for 2 epochs (about 97% test accuracy), in eval mode."""
    return _trained(request, "mnist-cnn-small-12k-2ep", "cnn-small", "mnist", shared_data_root, 12_000, 2)


@pytest.fixture(scope="session")
def digits_cnn(request: pytest.FixtureRequest) -> torch.nn.Module:
    """``cnn-small`` trained on the bundled digits data for 15 epochs (no files needed), in eval mode."""
    return _trained(request, "digits-cnn-small-15ep", "cnn-small", "digits", None, None, 15)
