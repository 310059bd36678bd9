"""The training loop: ``fit`` (one loop for every kind of training) and ``evaluate_accuracy``.

What ``fit`` returns (:class:`TrainHistory`, :class:`EpochRecord`) lives in :mod:`advlab.train.history`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_float, check_int, check_optional
from advlab.models.classifier import Classifier, unchecked_inputs
from advlab.train.callbacks import Callback, ProgressBar, TrainState
from advlab.train.distributed import (
    all_reduce_sum,
    all_true,
    check_batch_size,
    rank,
    rank_seed,
    union_of_names,
    world_size,
)
from advlab.train.history import EpochRecord, TrainHistory
from advlab.train.optim import make_optimizer, make_scheduler
from advlab.train.steps import StepContext, StepFn, StepOutput, standard_step

# The seeds ``torch.manual_seed`` accepts.
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


def fit(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | torch.optim.Optimizer = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = None,
    step: StepFn = standard_step,
    callbacks: Sequence[Callback] = (),
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    momentum: float = 0.9,
    nesterov: bool = False,
    grad_clip: float | None = None,
) -> TrainHistory:
    """Trains ``model`` on ``(x_train, y_train)`` with mini-batches; the one loop of advlab.

    Each epoch shuffles the data with a ``torch.Generator`` seeded from ``seed`` and, per batch, calls
    ``step(model, x, y, ctx)`` for the loss, then ``zero_grad``, ``backward``, optional gradient-norm
    clipping, ``optimizer.step()`` and the schedule's step. Changing ``step`` is how other training
    methods (adversarial training and its relatives) reuse this loop. The model is in train mode during
    training, in eval mode for validation, and back in its original mode afterwards.

    Determinism: with the same initial weights and ``seed``, two runs on CPU give identical weights and
    histories. ``fit`` never seeds the global RNG, so initialisation (and dropout, which draws from
    torch's global RNG) is the caller's business: call ``torch.manual_seed`` before building the model.

    Several processes (``torchrun``, see :mod:`advlab.train.distributed`): when a process group of more than
    one process is initialised, ``fit`` wraps the model in ``DistributedDataParallel`` and the step function
    receives the wrapper (``ctx.module`` is the model itself, for crafting inputs). ``batch_size`` is the
    global batch and must be divisible by the number of processes (else ``ValueError``, before any training);
    every process draws the same permutation and takes its contiguous share of each global batch, so a step
    equals the single-process step on the same global batch. The last global batch is cut to a multiple of the
    number of processes (at most ``world_size - 1`` examples an epoch are left out; a share of one example
    joins the batch before, as in one process). ``ctx.generator`` is seeded per process
    (:func:`~advlab.train.distributed.rank_seed`; process 0 keeps the single-process seed). The epoch's
    numbers are summed over the processes, so the history is the global one, and a callback's
    ``stop_training`` on any process stops all. Callbacks see the model itself as ``state.model``; their
    running numbers during an epoch are the process's own, the numbers at ``on_epoch_end`` are global.

    Args:
        model: returns logits ``(N, K)``; moved to ``device`` in place when ``device`` is given.
        x_train: float inputs ``(N, C, H, W)`` (any shape the model takes), on any device.
        y_train: integer labels ``(N,)`` in ``[0, K)``.
        epochs: number of passes over the data (>= 1).
        batch_size: examples per step (>= 1), over all processes; a last batch of a single example (per
            process) is merged into the one before it (batch-norm cannot train on one example).
        lr: learning rate (peak learning rate for ``"onecycle"``).
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, or a ready ``torch.optim.Optimizer`` over
            the model's parameters (then ``lr``, ``weight_decay``, ``momentum``, ``nesterov`` are unused).
        weight_decay: weight decay (>= 0).
        schedule: ``None`` (constant), ``"cosine"`` or ``"onecycle"``; stepped after every batch.
        step: the step function, default :func:`standard_step` (cross-entropy on clean inputs).
        callbacks: :class:`Callback` objects receiving the loop's events in order.
        x_val, y_val: optional validation data; its accuracy is measured after every epoch.
        seed: seeds the shuffling and ``ctx.generator`` of the step function (per process, see above).
        device: where batches (and the model) go; default the device of the model's parameters.
        progress: show a tqdm bar per epoch on stderr.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        grad_clip: clip the global gradient norm to this value before each step, or ``None``.

    Returns:
        A :class:`TrainHistory`.

    Example:
        >>> import torch
        >>> from advlab.train import fit
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.rand(256, 1, 2, 2); y = (x.flatten(1).sum(1) > 2).long()
        >>> history = fit(net, x, y, epochs=5, lr=0.05, seed=0)
        >>> history.epochs[-1].loss < history.epochs[0].loss
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(step):
        raise TypeError("step must be a function step(model, x, y, ctx) -> StepOutput")
    y_train = _check_data(x_train, y_train, "train", unlabelled=bool(getattr(step, "accepts_unlabelled", False)))
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val for validation, or neither")
    if x_val is not None and y_val is not None:
        y_val = _check_data(x_val, y_val, "val")
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=_SEED_MIN, maximum=_SEED_MAX)
    check_optional("grad_clip", grad_clip, check_float, inclusive=False)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    shard = (rank(), world_size())
    if shard[1] > 1:
        check_batch_size(batch_size, shard[1])
        slices = _shard_slices(len(x_train), batch_size, shard[1])
    else:
        slices = _batch_slices(len(x_train), batch_size)

    if device is not None:
        dev = torch.device(device)
        model.to(dev)
    else:
        dev = _model_device(model, x_train.device)
    # ``net`` takes the steps (the DDP wrapper with several processes), ``model`` is the model itself.
    net = model
    if _is_ddp(model):
        inner = model.module
        assert isinstance(inner, nn.Module)  # DistributedDataParallel wraps a module
        model = inner
    elif shard[1] > 1:
        net = _wrap_ddp(model, dev)

    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters; nothing to fit")
        opt = make_optimizer(
            params, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov
        )
    scheduler = make_scheduler(opt, schedule, total_steps=epochs * len(slices))

    shuffle_gen = torch.Generator().manual_seed(seed)  # the same permutation on every process
    step_gen = torch.Generator(device=dev).manual_seed(rank_seed(_derive_seed(seed, 1), shard[0]))

    # Validate the data once here so per-batch input checks of a Classifier can be skipped.
    checked = isinstance(model, Classifier) and model.check_inputs
    if isinstance(model, Classifier) and checked:
        model.validate(x_train)
        if x_val is not None:
            model.validate(x_val)

    cbs: list[Callback] = list(callbacks)
    if progress:
        cbs.append(ProgressBar())
    state = TrainState(
        model=model, optimizer=opt, scheduler=scheduler, epochs=epochs, steps_per_epoch=len(slices)
    )
    was_training = model.training
    t_fit = time.perf_counter()
    with unchecked_inputs(model) if checked else nullcontext():
        try:
            for cb in cbs:
                cb.on_fit_start(state)
            for epoch in range(epochs):
                state.epoch = epoch
                state.metrics = {}
                state.output = None
                record = _train_epoch(net, model, x_train, y_train, slices, shard, step, opt, scheduler, state,
                                      cbs, dev, shuffle_gen, step_gen, grad_clip)
                if x_val is not None and y_val is not None:
                    record.val_accuracy = evaluate_accuracy(model, x_val, y_val)
                    state.metrics["val_accuracy"] = record.val_accuracy
                state.history.append(record)
                for cb in cbs:
                    cb.on_epoch_end(state)
                if shard[1] > 1:  # one process stopping stops all (a collective: every process calls it)
                    state.stop_training = not all_true(not state.stop_training)
                if state.stop_training:
                    break
            for cb in cbs:
                cb.on_fit_end(state)
        finally:
            model.train(was_training)
    last = state.history[-1]
    return TrainHistory(
        epochs=list(state.history),
        train_accuracy=last.train_accuracy,
        val_accuracy=last.val_accuracy,
        seconds=time.perf_counter() - t_fit,
        steps=state.step,
    )


def _train_epoch(
    net: nn.Module,
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    slices: list[tuple[int, int]],
    shard: tuple[int, int],
    step: StepFn,
    opt: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    cbs: list[Callback],
    dev: torch.device,
    shuffle_gen: torch.Generator,
    step_gen: torch.Generator,
    grad_clip: float | None,
) -> EpochRecord:
    """One pass over ``slices`` (global batches) of the permuted data; ``net`` takes the steps, ``model`` is the
    model itself; with ``shard = (rank, world_size)`` of several processes this process takes its contiguous
    share of every batch and the epoch's sums are all-reduced."""
    rank_, world = shard
    model.train()
    for cb in cbs:
        cb.on_epoch_start(state)
    t0 = time.perf_counter()
    perm = torch.randperm(len(x_train), generator=shuffle_gen).to(x_train.device)
    loss_sum, seen, correct, counted = 0.0, 0, 0, 0
    extra_sums: dict[str, float] = {}
    for b, (start, stop) in enumerate(slices):
        share = (stop - start) // world
        idx = perm[start + rank_ * share : start + (rank_ + 1) * share]
        xb = x_train[idx].to(dev, non_blocking=True)
        yb = y_train[idx].to(dev, non_blocking=True)
        ctx = StepContext(
            epoch=state.epoch, epochs=state.epochs, batch=b, step=state.step,
            steps_per_epoch=len(slices), generator=step_gen, device=dev, optimizer=opt, module=model,
        )
        out = step(net, xb, yb, ctx)
        if not isinstance(out, StepOutput):
            raise TypeError(f"the step function must return a StepOutput, got {type(out).__name__}")
        if not isinstance(out.loss, Tensor) or out.loss.numel() != 1:
            raise ValueError("StepOutput.loss must be a scalar tensor (reduce the loss with .mean())")
        n = share
        # One host sync per step for the numbers.
        if out.logits is not None:
            labelled = yb >= 0
            hits = (out.logits.detach().argmax(dim=1) == yb).sum().to(out.loss.dtype)
            loss_v, hits_v, labelled_v = torch.stack(
                [out.loss.detach().reshape(()), hits, labelled.sum().to(out.loss.dtype)]
            ).tolist()
            correct += round(hits_v)
            counted += round(labelled_v)
        else:
            loss_v = float(out.loss.detach())
        if not math.isfinite(loss_v):
            raise FloatingPointError(
                f"training loss became {loss_v} at epoch {state.epoch}, batch {b}; lower the learning "
                f"rate or set grad_clip"
            )
        lr_used = float(opt.param_groups[0]["lr"])
        if not out.applied:
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        loss_sum += loss_v * n
        seen += n
        for key, value in out.metrics.items():
            extra_sums[key] = extra_sums.get(key, 0.0) + float(value) * n
        state.batch = b
        state.output = out
        state.metrics["loss"] = loss_sum / seen
        if counted:
            state.metrics["accuracy"] = correct / counted
        state.metrics["lr"] = lr_used
        for key, total in extra_sums.items():
            state.metrics[key] = total / seen
        for cb in cbs:
            cb.on_batch_end(state)
    if world > 1:  # the global numbers of the epoch: sums over the processes
        keys = union_of_names(extra_sums)
        totals = all_reduce_sum([loss_sum, seen, correct, counted, *(extra_sums.get(k, 0.0) for k in keys)])
        loss_sum, seen, correct, counted = totals[0], round(totals[1]), round(totals[2]), round(totals[3])
        extra_sums = dict(zip(keys, totals[4:], strict=True))
        state.metrics["loss"] = loss_sum / seen
        if counted:
            state.metrics["accuracy"] = correct / counted
        for key, total in extra_sums.items():
            state.metrics[key] = total / seen
    seconds = time.perf_counter() - t0
    state.metrics["seconds"] = seconds
    return EpochRecord(
        epoch=state.epoch,
        loss=loss_sum / seen,
        train_accuracy=correct / counted if counted else None,
        val_accuracy=None,
        seconds=seconds,
        lr=state.metrics["lr"],
        metrics={k: v / seen for k, v in extra_sums.items()},
    )


def evaluate_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (top-1), in eval mode without gradients.

    The model's train/eval mode is restored afterwards. Batches go to the device of the model's
    parameters (``x``'s device for a model without parameters).

    Args:
        model: returns logits (or any scores whose argmax is the prediction) ``(N, K)``.
        x: inputs ``(N, ...)``.
        y: integer labels ``(N,)``.
        batch_size: examples per forward pass (>= 1).

    Returns:
        Accuracy in ``[0, 1]``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> 0.0 <= evaluate_accuracy(net, torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)) <= 1.0
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    y = _check_data(x, y, "evaluation")
    check_int("batch_size", batch_size)
    dev = _model_device(model, x.device)
    checked = isinstance(model, Classifier) and model.check_inputs
    if isinstance(model, Classifier) and checked:
        model.validate(x)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=dev)
    try:
        with torch.no_grad(), unchecked_inputs(model) if checked else nullcontext():
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(dev, non_blocking=True)
                yb = y[start : start + batch_size].to(dev, non_blocking=True)
                correct += (model(xb).argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    return int(correct) / len(x)


def _check_data(x: Tensor, y: Tensor, what: str, *, unlabelled: bool = False) -> Tensor:
    """Validates an ``(x, y)`` pair and returns ``y`` as int64; with ``unlabelled``, ``-1`` marks an
    unlabelled example."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what} inputs and labels must be torch.Tensors, got {type(x).__name__}, "
                        f"{type(y).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} inputs must be floating point, got {x.dtype}; convert with x.float()")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{what} labels must be a 1-D integer tensor (N,), got shape {tuple(y.shape)} "
                         f"and dtype {y.dtype}")
    if x.dim() < 2 or len(x) != len(y):
        raise ValueError(f"{what} inputs {tuple(x.shape)} and labels {tuple(y.shape)} must share the "
                         f"first dimension N >= 1")
    if len(x) == 0:
        raise ValueError(f"{what} data is empty; pass at least one example")
    low = -1 if unlabelled else 0
    if int(y.min()) < low:
        extra = " or -1 (unlabelled)" if unlabelled else ""
        raise ValueError(f"{what} labels must be class indices >= 0{extra}, got {int(y.min())}")
    return y.long()


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _wrap_ddp(model: nn.Module, dev: torch.device) -> nn.Module:
    """``model`` (already on ``dev``) in ``DistributedDataParallel`` over the initialised process group; the
    wrapper broadcasts process 0's weights to the others."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl" and dev.type != "cuda":
        raise ValueError(f"the process group uses NCCL, which needs CUDA, but the model trains on {dev}; train on "
                         f"cuda (--device cuda) or initialise the group with gloo")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters; nothing to fit")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return fallback


def _batch_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` bounds of the batches; a trailing batch of one example joins the previous one."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


def _shard_slices(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """``[start, stop)`` bounds of the global batches for ``world`` processes, each a multiple of ``world``
    (``batch_size`` must be one): the single-process batches with the last one cut to a multiple of ``world``
    (dropped when less than ``world`` remain; one example per process joins the batch before)."""
    if n < world:
        raise ValueError(f"{n} training example(s) cannot be shared by {world} processes; use more data or fewer "
                         f"processes (--nproc_per_node)")
    bounds = _batch_slices(n, batch_size)
    start, stop = bounds[-1]
    stop -= (stop - start) % world
    bounds[-1] = (start, stop)
    if stop - start < world:
        bounds.pop()
    elif stop - start == world and len(bounds) > 1:
        bounds[-2] = (bounds[-2][0], stop)
        bounds.pop()
    return bounds


def _derive_seed(seed: int, stream: int) -> int:
    """A distinct, reproducible 63-bit seed for another random stream of the same run."""
    return (seed * 6364136223846793005 + 1442695040888963407 * (stream + 1)) % (2**63)
