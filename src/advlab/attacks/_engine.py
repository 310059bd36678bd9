"""The attack engine shared by every attack: validation, budgets, batching, cost accounting, re-checks.

An attack file supplies a *kernel* and calls :func:`run_attack`:

- a fixed-budget kernel ``kernel(ctx, x, y, eps) -> x_adv`` is run once per budget (``eps = 0`` is
  short-circuited to the identity);
- a minimum-norm kernel (registered with ``min_norm=True``) ``kernel(ctx, x, y, max_eps) -> x_adv`` is run
  once; every budget is then filled by projecting its perturbation onto that budget's ball.

Either way the engine projects onto the ball, clips to the bounds and re-checks success with one more
forward pass: a result never trusts the kernel's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_int, check_labels, check_optional
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._registry import attack_spec
from advlab.attacks._result import AttackResult
from advlab.attacks._validation import clean_check, model_bounds, validate_eps, validate_inputs
from advlab.models.classifier import unchecked_inputs
from advlab.threat import LpBall, check_norm

# Called after each chunk with (examples done, examples in the call), while :func:`progress` is active.
_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("advlab_attack_progress", default=None)


@contextmanager
def progress(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Within this context every attack calls ``callback(done, total)`` after each chunk it finishes (for a
    progress bar); the callback sees counts only and cannot change a result."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@contextmanager
def attack_mode(model: nn.Module | Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Evaluation mode, frozen parameters and no per-call input checks for the duration of an attack;
    every submodule's mode and every parameter's ``requires_grad`` are restored after, even on error."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with unchecked_inputs(model):
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def run_attack(
    name: str,
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str,
    kernel: Kernel,
    config: Any,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
    clean_first: bool = False,
    choose_targets: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> AttackResult:
    """Validates, runs ``kernel`` per batch and budget, and assembles a re-checked :class:`AttackResult`.

    The supported norms and whether the attack is minimum-norm come from its registry entry (``name``).

    Args:
        name: the attack's registered name.
        model: maps inputs within its bounds to logits ``(N, K)``.
        x: ``(N, ...)`` inputs within the model's bounds. y: ``(N,)`` true classes, or targets when targeted.
        eps: one budget or a sequence of budgets (raw input units).
        norm: the threat model's norm; must be one the attack supports.
        kernel: the attack's kernel (see module docstring).
        config: the attack's frozen config of hyper-parameters (recorded in ``result.config``).
        targeted: whether ``y`` holds target classes.
        generator: source of randomness for random starts; same seed, same result.
        batch_size: split ``x`` into chunks of this many examples (default: all at once).
        true_labels: with ``targeted=True``, the true classes; a target equal to its true class is an error.
        clean_first: the kernel's first evaluation is at the clean input itself (FGSM, BIM, MI-FGSM, DeepFool):
            the engine then takes the clean logits from it instead of running a forward pass of its own
            beforehand. Either way the clean logits are validated before the kernel uses them.
        choose_targets: for attacks that choose their own targets (ILLC): ``y`` holds the true classes and
            ``choose_targets(clean_logits, y_chunk)`` gives each chunk's targets from its clean logits (no
            extra forward pass); the run is targeted and ``result.labels`` holds the targets.
    """
    t0 = time.perf_counter()
    spec = attack_spec(name)
    if not isinstance(config, spec.config):
        raise TypeError(f"attack {name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    norm = check_norm(norm, spec.norms)
    budgets = validate_eps(eps)
    bounds = model_bounds(model)
    y = validate_inputs(x, y, bounds)
    check_optional("batch_size", batch_size, check_int)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if choose_targets is not None:
        targeted, true_labels = True, y
    elif true_labels is not None:
        true_labels = check_labels(true_labels, x.shape[0], "true_labels", device=x.device)
        if targeted and bool((true_labels == y).any()):
            bad = int((true_labels == y).nonzero()[0, 0])
            raise ValueError(
                f"targeted attack: the target of example {bad} equals its true label ({int(y[bad])}); "
                f"choose targets different from the true classes (e.g. threat.choose_targets)"
            )
    n = x.shape[0]
    chunk = batch_size or n
    x_adv = torch.empty((len(budgets), *x.shape), dtype=x.dtype, device=x.device)
    adv_pred = torch.empty((len(budgets), n), dtype=torch.long, device=x.device)
    ctx = AttackContext(model, bounds, generator, targeted)
    clean_logits: list[Tensor] = []
    labels = y if choose_targets is None else torch.empty_like(y)
    report = _PROGRESS.get()
    with attack_mode(model):
        for start in range(0, n, chunk):
            xb, yb = x[start : start + chunk].detach(), y[start : start + chunk]
            tb = None if true_labels is None else true_labels[start : start + chunk]
            ctx.begin_chunk(xb, clean_check(yb, tb), tb)
            if choose_targets is not None:
                yb = labels[start : start + chunk] = choose_targets(ctx.clean_logits(), yb)
            elif not clean_first:
                ctx.clean_logits()
            found = kernel(ctx, xb, yb, max(budgets)) if spec.min_norm else None
            for i, e in enumerate(budgets):
                if e == 0.0:
                    x_adv[i, start : start + chunk] = xb
                    continue
                cand = found if found is not None else kernel(ctx, xb, yb, e)
                x_adv[i, start : start + chunk] = ctx.clip(xb + LpBall(norm, e).project(cand.detach() - xb))
            clean_logits.append(ctx.clean_logits())
            if report is not None:
                report(min(start + chunk, n), n)
        # Re-check every budget on the final, clipped inputs.
        for i in range(len(budgets)):
            for start in range(0, n, chunk):
                adv_pred[i, start : start + chunk] = ctx.logits(x_adv[i, start : start + chunk]).argmax(dim=1)
    success = adv_pred == labels if targeted else adv_pred != labels
    clean_pred = torch.cat(clean_logits).argmax(dim=1)
    if targeted and true_labels is not None:
        clean_correct = clean_pred == true_labels
    else:
        clean_correct = clean_pred != labels if targeted else clean_pred == labels
    distances = torch.stack([LpBall(norm, 0.0).distance(x, x_adv[i]) for i in range(len(budgets))])
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    cfg = dataclasses.asdict(config)
    cfg.update({"norm": norm, "eps": list(budgets), "targeted": targeted, "batch_size": batch_size})
    return AttackResult(
        attack=name, eps=budgets, norm=norm, targeted=targeted, labels=labels, x_adv=x_adv.detach(),
        success=success, adv_pred=adv_pred, distances=distances, clean_correct=clean_correct, clean_pred=clean_pred,
        n_forward=ctx.n_forward, n_backward=ctx.n_backward, n_queries=ctx.n_forward,
        seconds=time.perf_counter() - t0, config=cfg,
    )
