"""Helpers shared by the benchmark scripts: machine description, timing, the benchmark model, tables."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import platformdirs
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DEFAULT_WORK_DIR = Path(platformdirs.user_cache_dir("advlab")) / "benchmarks"


def version_of(dist: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when tracked files were modified), or ``None``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, library versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "advlab": version_of("advlab"),
        "commit": git_commit(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "malloc": malloc_settings(),
    }


# glibc's malloc hands large freed blocks (a batch's activations) back to the system and faults them in again
# on the next pass: up to 250,000 page faults in one 10-step attack here, and how many depends on the order of
# earlier allocations, so two identical computations measured up to 25 % apart. Keeping freed memory in the
# process removes that noise for every library alike (jemalloc or tcmalloc do the same).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def ensure_steady_malloc(argv: list[str]) -> None:
    """Re-runs this script with :data:`STEADY_MALLOC` in the environment unless already there (Linux only)."""
    if not sys.platform.startswith("linux") or all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items()):
        return
    env = {**os.environ, **STEADY_MALLOC}
    os.execve(sys.executable, [sys.executable, *argv], env)


def malloc_settings() -> dict[str, str | None]:
    """The glibc malloc tunables in effect (see :data:`STEADY_MALLOC`)."""
    return {k: os.environ.get(k) for k in STEADY_MALLOC}


def sync(device: torch.device) -> None:
    """Waits for queued GPU work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``, synchronising the device before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def benchmark_model(
    work_dir: Path, data_root: Path, *, checkpoint: Path | None = None, train_size: int = 60_000, epochs: int = 1,
    seed: int = 0, log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, Path]:
    """The ``cnn-small`` MNIST model of the benchmarks: ``checkpoint`` when given, else trained once with
    :func:`advlab.train.train_model` (``train_size`` training images, a random subset when fewer than 60,000;
    ``epochs`` epochs, Adam 1e-3, batch 128, no schedule, ``seed``) and cached in ``work_dir``.

    The same model as ``advlab train --model cnn-small --data mnist --epochs 1 --lr 1e-3 --batch-size 128
    --optimizer adam --schedule none --seed 0`` (with ``--n-train`` for a smaller ``train_size``).
    """
    from advlab.models import load_checkpoint
    from advlab.train import Recipe, save_run, train_model

    if checkpoint is not None:
        return load_checkpoint(checkpoint), checkpoint
    path = work_dir / f"mnist-cnn-small-{train_size}-{epochs}ep-seed{seed}"
    if (path / "model.json").exists():
        return load_checkpoint(path), path
    log(f"training cnn-small on {train_size} MNIST images for {epochs} epoch(s); cached in {path}")
    recipe = Recipe(epochs=epochs, lr=1e-3, optimizer="adam", batch_size=128, schedule=None)
    run = train_model("cnn-small", "mnist", recipe, seed=seed, data_root=data_root, n_train=train_size)
    log(f"trained in {run.summary['seconds']:.0f} s, test accuracy {run.summary['test_accuracy']:.4f}")
    save_run(run, path)
    return load_checkpoint(path), path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
