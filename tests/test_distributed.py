"""Training with DistributedDataParallel under torchrun (advlab.train.distributed): two CPU processes (gloo) train
the same model as one process with the same global batch, adversarial training included, and refuse a global batch
the processes cannot share before touching --out.

The two-process runs go through the real launcher, ``python -m torch.distributed.run --nproc_per_node 2 -m advlab
train ...``; the one-process reference runs the same command in this process. The models have no dropout and no
batch norm, and the defense (fgsm-at) crafts deterministic examples, so the only difference between the runs is
the order of float sums (each process averages its shard, DDP averages the two means): measured on the
development machine, weights within 3e-7 and epoch losses within 3e-8 relative after two epochs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from advlab import load_checkpoint
from advlab.cli.main import cli
from advlab.models import load_checkpoint_metadata
from advlab.train.distributed import check_batch_size, init_distributed, launch_from_env, rank_seed
from advlab.train.loop import _batch_slices, _shard_slices

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread per test

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed gloo backend; DDP on CPU cannot run",
)

# Tolerances of the two-process run against one process: float sums in another order, nothing else.
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-6
# The same small run for both: 384 digits, global batches of 64, no progress bars, CPU (gloo).
RUN = ["--model", "mlp", "--data", "digits", "--n-train", "384", "--batch-size", "64", "--device", "cpu",
       "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``advlab train ARGS`` in two CPU processes started by torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "advlab", "train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _one_process(args: list[str]) -> dict[str, Any]:
    """``advlab train ARGS`` in this process; its JSON summary."""
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def _compare(one: Path, two: Path) -> dict[str, Any]:
    """Asserts that the checkpoints of one and of two processes hold the same model and epoch history (within
    the stated tolerances); returns the two-process metadata."""
    a, b = load_checkpoint(one).state_dict(), load_checkpoint(two).state_dict()
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= WEIGHT_ATOL, f"weights differ by {diff:.3g}"
    meta_one, meta_two = load_checkpoint_metadata(one), load_checkpoint_metadata(two)
    hist_one, hist_two = meta_one["extra"]["history"]["epochs"], meta_two["extra"]["history"]["epochs"]
    assert len(hist_one) == len(hist_two) == meta_one["metrics"]["epochs"]
    n = meta_one["metrics"]["n_train"]
    for e1, e2 in zip(hist_one, hist_two, strict=True):
        assert e2["loss"] == pytest.approx(e1["loss"], rel=LOSS_RTOL)
        assert abs(e2["train_accuracy"] - e1["train_accuracy"]) <= 1.0 / n + 1e-12  # an argmax tie at most
        assert e2["metrics"].keys() == e1["metrics"].keys()
        for key, value in e1["metrics"].items():
            assert e2["metrics"][key] == pytest.approx(value, abs=1.0 / n + 1e-6), key
    assert meta_two["extra"]["world_size"] == 2 and "world_size" not in meta_one["extra"]
    assert sorted(p.name for p in two.iterdir()) == ["model.json", "model.safetensors"]  # no lock file left
    return meta_two


# ---------------------------------------------------------------- two processes against one


@needs_gloo
def test_two_processes_train_the_same_model_as_one(tmp_path: Path) -> None:
    proc = _torchrun([*RUN, "--epochs", "2", "--out", str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[:4000]
    summary = json.loads(proc.stdout)  # one JSON document: only process 0 prints
    assert summary["world_size"] == 2 and summary["n_train"] == 384 and Path(summary["checkpoint"]).is_dir()
    assert "epoch 1/2" not in proc.stderr  # --no-progress holds in every process
    one = _one_process([*RUN, "--epochs", "2", "--out", str(tmp_path / "one")])
    assert "world_size" not in one
    _compare(tmp_path / "one", tmp_path / "two")
    assert summary["loss"] == pytest.approx(one["loss"], rel=LOSS_RTOL)
    assert summary["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1.0 / one["n_test"] + 1e-12)


@needs_gloo
def test_adversarial_training_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """fgsm-at crafts against the model's own predictions without randomness: deterministic. Its held-out
    split (38 of 384) leaves 346 examples, so the last global batch (26) is shared 13 + 13."""
    defended = [*RUN, "--epochs", "2", "--defense", "fgsm-at", "--eps", "0.1"]
    proc = _torchrun([*defended, "--out", str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[:4000]
    summary = json.loads(proc.stdout)
    assert summary["defense"]["name"] == "fgsm-at" and summary["world_size"] == 2
    _one_process([*defended, "--out", str(tmp_path / "one")])
    meta = _compare(tmp_path / "one", tmp_path / "two")
    assert "adv_accuracy" in meta["extra"]["history"]["epochs"][-1]["metrics"]
    one_monitor = load_checkpoint_metadata(tmp_path / "one")["extra"]["monitor"]["epochs"]
    two_monitor = meta["extra"]["monitor"]["epochs"]
    for m1, m2 in zip(one_monitor, two_monitor, strict=True):
        for key in ("held_clean_accuracy", "held_robust_accuracy"):
            assert m2[key] == pytest.approx(m1[key], abs=1.0 / 38 + 1e-6)


@needs_gloo
def test_a_global_batch_the_processes_cannot_share_fails_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    proc = _torchrun([*RUN, "--batch-size", "51", "--epochs", "1", "--out", str(out)], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("must be divisible by 2; set it to 50 or 52 (--batch-size)") == 1  # process 0 only
    assert proc.stdout.strip() == ""  # no summary
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- the pieces, in one process


@pytest.mark.parametrize("n,batch,world", [(384, 64, 2), (346, 64, 2), (100, 32, 4), (65, 32, 2), (67, 32, 2),
                                           (129, 64, 2), (7, 6, 3), (3, 8, 2)])
def test_shard_slices_split_every_global_batch_evenly(n: int, batch: int, world: int) -> None:
    slices = _shard_slices(n, batch, world)
    sizes = [stop - start for start, stop in slices]
    assert all(s % world == 0 and s >= world for s in sizes)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices)) and slices[0][0] == 0
    assert n - slices[-1][1] < world  # at most world - 1 examples of an epoch left out
    rest = n % batch
    if rest % world == 0 and rest not in (1, world):  # nothing to cut or merge: the single-process batches
        assert slices == _batch_slices(n, batch)
    if len(slices) > 1:
        assert sizes[-1] // world >= 2  # a share of one example joins the batch before


def test_shard_slices_need_an_example_per_process() -> None:
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        _shard_slices(3, 4, 4)


def test_the_global_batch_must_divide_by_the_processes() -> None:
    check_batch_size(64, 2)
    check_batch_size(7, 1)
    with pytest.raises(ValueError, match=r"divisible by 4; set it to 96 or 100 \(--batch-size\)"):
        check_batch_size(98, 4)
    with pytest.raises(ValueError, match="set it to 4 "):
        check_batch_size(3, 4)


def test_rank_seeds_keep_process_zero_and_differ_elsewhere() -> None:
    seeds = [rank_seed(11, r) for r in range(8)]
    assert seeds[0] == 11 and len(set(seeds)) == 8 and all(0 <= s < 2**63 for s in seeds[1:])
    assert rank_seed(11, 3) == rank_seed(11, 3) != rank_seed(12, 3)
    assert rank_seed(11) == 11  # no process group: process 0


def test_launch_is_read_from_the_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launch_from_env() is None and init_distributed("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        launch_from_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = launch_from_env()
    assert launch is not None and (launch.rank, launch.local_rank, launch.world_size) == (3, 1, 4)
    # Refused before any process group is made: a CUDA index that is not LOCAL_RANK, a device DDP cannot use.
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        init_distributed("cuda:0")
    with pytest.raises(ValueError, match="CPU \\(gloo\\) or CUDA"):
        init_distributed("meta")
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="out of range"):
        launch_from_env()
