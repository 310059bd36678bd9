"""Shared fixtures: the real data beside the checkout and small trained models (cached between runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout (MNIST, Fashion-MNIST, CIFAR-10 subset); skips when absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _trained(
    request: pytest.FixtureRequest,
    key: str,
    model_name: str,
    dataset: str,
    root: Path | None,
    n_train: int,
    epochs: int,
) -> torch.nn.Module:
    """Trains ``model_name`` on the first ``n_train`` training examples, caching the checkpoint in pytest's cache."""
    from advlab.data import load_dataset
    from advlab.models import create_model, load_checkpoint, save_checkpoint
    from advlab.train import fit

    cache_dir = Path(request.config.cache.mkdir("advlab-models")) / key
    if (cache_dir / "model.json").exists():
        try:
            return load_checkpoint(cache_dir)
        except (ValueError, OSError):
            pass  # stale cache from an older format: retrain
    x, y = load_dataset(dataset, "train", root=root)
    # The same model on every run: the initialisation and dropout draw from the global RNG, seeded here (and
    # restored after, for the other tests), and reductions split over threads change the float sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(model_name, dataset=dataset)
            fit(model, x[:n_train], y[:n_train], epochs=epochs, batch_size=128, lr=1e-3, seed=0)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_checkpoint(model, cache_dir, dataset=dataset, seed=0)
    return load_checkpoint(cache_dir)


@pytest.fixture(scope="session")
def mnist_test(shared_data_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNIST test split (10,000 examples)."""
    from advlab.data import load_dataset

    return load_dataset("mnist", "test", root=shared_data_root)


@pytest.fixture(scope="session")
def mnist_cnn(request: pytest.FixtureRequest, shared_data_root: Path) -> torch.nn.Module:
    """``cnn-small`` trained on 12,000 MNIST images for 2 epochs (about 98% test accuracy), in eval mode."""
    return _trained(request, "mnist-cnn-small-12k-2ep", "cnn-small", "mnist", shared_data_root, 12_000, 2)


@pytest.fixture(scope="session")
def digits_cnn(request: pytest.FixtureRequest) -> torch.nn.Module:
    """``cnn-small`` trained on the bundled digits data (no files needed), in eval mode."""
    return _trained(request, "digits-cnn-small", "cnn-small", "digits", None, 10_000, 15)
