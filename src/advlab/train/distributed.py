"""Training beyond one process: DistributedDataParallel under ``torchrun`` (gloo on CPU, NCCL on CUDA).

How to run it::

    torchrun --nproc_per_node 2 -m advlab train --model cnn-small --data mnist --defense fast-at --eps 0.3 --out runs/x

``torchrun`` starts one process per worker and tells each its place through the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). ``advlab train`` then calls
:func:`distributed_session`, which initialises the process group once (gloo for a CPU device, NCCL for CUDA,
where each process takes ``cuda:LOCAL_RANK``) and destroys it at the end. Inside it, :func:`advlab.train.fit`
sees a process group of more than one process and trains with ``DistributedDataParallel``:

- ``batch_size`` is the **global** batch: every process draws the same permutation of the training set each
  epoch and takes its contiguous share (``batch_size / world_size`` examples) of every global batch, so one
  optimizer step equals the single-process step on the same global batch (DDP averages the gradients of the
  equal shards' mean losses). ``batch_size`` must be divisible by the number of processes
  (:func:`check_batch_size`).
- The last global batch is cut to a multiple of the number of processes: at most ``world_size - 1`` examples
  of an epoch are left out (other ones every epoch, as the permutation changes); a last batch of one example
  per process joins the one before it, as a last batch of one example does in a single process.
- Each process draws its own random numbers for its shard (random starts of an attack, dropout): its step
  generator and torch's global RNG are seeded by :func:`rank_seed`, which leaves process 0 on the seeds a
  single process uses.
- The epoch's numbers (loss, train accuracy, the step functions' metrics) are summed over the processes, so the
  history is the global one; the weights stay identical on every process.
- Process 0 alone shows the progress bar, prints the summary and writes the checkpoint
  (:func:`advlab.train.save_run`); the others wait for it at a barrier, so the command ends once the checkpoint
  is complete.

A library user does the same from a script started by ``torchrun``::

    from advlab.train import distributed_session, is_main_process, save_run, train_model

    with distributed_session("cpu") as device:
        run = train_model("mlp", "digits", seed=0, device=device)
        save_run(run, "runs/mlp")            # process 0 writes, the others wait
        if is_main_process():
            print(run.summary["test_accuracy"])

Batch normalisation normalises each process's shard with the shard's own statistics (DDP's default; the running
statistics are those of process 0, broadcast at every forward pass), so a model with batch norm is not exactly
the single-process model; every model without it is, up to the order of float sums. Validation and test
accuracy are measured by every process on the whole split (identical numbers).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "Launch",
    "PeerFailedError",
    "all_reduce_sum",
    "all_true",
    "barrier",
    "check_batch_size",
    "distributed_session",
    "init_distributed",
    "is_main_process",
    "launch_from_env",
    "rank",
    "rank_seed",
    "shutdown_distributed",
    "union_of_names",
    "world_size",
]


class PeerFailedError(RuntimeError):
    """Another process of the group failed at a step this one waited for (it reports its own error)."""


@dataclass(frozen=True)
class Launch:
    """Where ``torchrun`` placed this process.

    Attributes:
        rank: the process's index among all processes, ``0 .. world_size - 1``.
        local_rank: its index on this machine (the CUDA device it takes).
        world_size: the number of processes (> 1).
    """

    rank: int
    local_rank: int
    world_size: int


def launch_from_env() -> Launch | None:
    """The :class:`Launch` that ``torchrun`` described in the environment, or ``None`` for a single process.

    A launch is ``WORLD_SIZE`` > 1 with ``RANK`` set (``LOCAL_RANK`` defaults to ``RANK``).

    Raises:
        ValueError: the variables are set but are not integers in range.

    Example:
        >>> launch_from_env() is None   # a plain ``python`` process
        True
    """
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return None
    try:
        world = int(text)
        if world <= 1:
            return None
        rank_ = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank_))
    except (KeyError, ValueError):
        raise ValueError(
            f"WORLD_SIZE={text!r} asks for distributed training but RANK/LOCAL_RANK are missing or not integers; "
            f"start the command with torchrun --nproc_per_node N, or unset WORLD_SIZE"
        ) from None
    if not 0 <= rank_ < world or local < 0:
        raise ValueError(f"RANK={rank_} / LOCAL_RANK={local} are out of range for WORLD_SIZE={world}; start the "
                         f"command with torchrun")
    return Launch(rank=rank_, local_rank=local, world_size=world)


def init_distributed(device: str | torch.device = "cpu") -> torch.device:
    """Initialises the process group of a ``torchrun`` launch (once) and returns this process's device.

    Without a launch (:func:`launch_from_env` is ``None``) nothing happens and ``device`` is returned. Under
    ``torchrun`` the backend is gloo for a CPU device and NCCL for CUDA, where every process takes
    ``cuda:LOCAL_RANK`` (a ``device`` of ``cuda:N`` with another ``N`` is refused). Rendezvous uses the
    environment (``env://``) that ``torchrun`` sets. Calling it again in the same process returns the device
    and leaves the group as it is.

    Args:
        device: ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK`` is also accepted).

    Returns:
        The device this process trains on.

    Raises:
        ValueError: a device other than CPU or CUDA, a CUDA index that is not ``LOCAL_RANK``, more processes
            on this machine than CUDA devices, or a backend this build of torch lacks.

    Example:
        >>> init_distributed("cpu")   # a single process: nothing to initialise
        device(type='cpu')
    """
    dev = torch.device(device)
    launch = launch_from_env()
    if launch is None:
        return dev
    if dev.type == "cuda":
        if dev.index is not None and dev.index != launch.local_rank:
            raise ValueError(f"under torchrun every process uses cuda:LOCAL_RANK (here cuda:{launch.local_rank}), "
                             f"not {dev}; pass --device cuda or auto")
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ValueError(f"torchrun started process {launch.local_rank} on this machine, which has {count} "
                             f"CUDA device(s); use --nproc_per_node {count} (one process per GPU) or --device cpu")
        dev = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on CPU (gloo) or CUDA (NCCL), not {dev.type}; pass --device "
                         f"cpu or cuda")
    if not dist.is_available() or not (
        dist.is_gloo_available() if backend == "gloo" else dist.is_nccl_available()
    ):
        raise ValueError(f"this build of torch has no {backend} backend for distributed training on {dev.type}; "
                         f"install a torch build with it, or run a single process")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size)
    return dev


def shutdown_distributed() -> None:
    """Destroys the process group if one is initialised (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str | torch.device = "cpu") -> Iterator[torch.device]:
    """:func:`init_distributed` for the block, yielding this process's device; the process group it
    initialised is destroyed when the block ends (also on an error). A no-op for a single process.

    Example:
        >>> with distributed_session("cpu") as device:
        ...     print(device, world_size())
        cpu 1
    """
    owned = not (dist.is_available() and dist.is_initialized())
    dev = init_distributed(device)
    try:
        yield dev
    finally:
        if owned:
            shutdown_distributed()


def world_size() -> int:
    """The number of processes of the initialised process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the initialised process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this is process 0, the one that logs and writes (``True`` without a process group)."""
    return rank() == 0


def barrier() -> None:
    """Waits until every process reaches this point (a no-op for a single process)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The element-wise sums of ``values`` over all processes (``values`` itself for a single process).

    Every process must pass as many values, in the same order. The sums are taken in float64.

    Example:
        >>> all_reduce_sum([1.0, 2.5])
        [1.0, 2.5]
    """
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` is true on every process (a collective: every process must call it).

    Example:
        >>> all_true(True)
        True
    """
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def union_of_names(names: Iterable[str]) -> list[str]:
    """The sorted union of ``names`` over all processes (a collective: every process must call it); the sorted
    ``names`` for a single process.

    Example:
        >>> union_of_names({"b": 1.0, "a": 2.0})
        ['a', 'b']
    """
    mine = sorted(set(names))
    if world_size() == 1:
        return mine
    gathered: list[list[str] | None] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return sorted({name for part in gathered for name in (part or [])})


def check_batch_size(batch_size: int, world: int | None = None) -> None:
    """Checks that the global ``batch_size`` splits evenly over ``world`` processes (default: the process
    group's size).

    Raises:
        ValueError: ``batch_size`` is not a multiple of the number of processes (naming the nearest valid sizes).

    Example:
        >>> check_batch_size(128, 4)
        >>> check_batch_size(100, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: batch_size 100 is the global batch, split over 3 processes: ... to 99 or 102 (--batch-size)
    """
    world = world_size() if world is None else world
    if world > 1 and batch_size % world != 0:
        low, high = (batch_size // world) * world, (batch_size // world + 1) * world
        options = f"{low} or {high}" if low > 0 else f"{high}"
        raise ValueError(f"batch_size {batch_size} is the global batch, split over {world} processes: it must be "
                         f"divisible by {world}; set it to {options} (--batch-size)")


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """The seed of process ``rank_`` (default: this process) for a random stream seeded ``seed`` in one process.

    Process 0 keeps ``seed``, so a single process is the special case of one rank; every other process gets
    a distinct, reproducible 63-bit seed, so the processes draw different numbers for their different shards.

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) != rank_seed(7, 2)
        (7, True)
    """
    r = rank() if rank_ is None else rank_
    if r == 0:
        return seed
    # splitmix64 of the seed and the rank: well spread, independent of the streams of advlab.train.loop.
    z = (seed + 0x9E3779B97F4A7C15 * (r + 1)) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


def _collective_device() -> torch.device:
    """Where the tensors of a collective live: the current CUDA device for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
