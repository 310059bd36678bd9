"""The attack engine shared by every attack: validation, budgets, batching, cost accounting, re-checks.

An attack file supplies a *kernel* and calls :func:`run_attack`:

- a fixed-budget kernel ``kernel(ctx, x, y, eps) -> x_adv`` is run once per budget (``eps = 0`` is
  short-circuited to the identity);
- a minimum-norm kernel (registered with ``min_norm=True``) ``kernel(ctx, x, y, max_eps) -> x_adv`` is run
  once; every budget is then filled by projecting its perturbation onto that budget's ball.

Either way the engine projects onto the ball, clips to the bounds and re-checks success with one more
forward pass: a result never trusts the kernel's own bookkeeping.

Randomness is drawn per example (:meth:`AttackContext.random`): the same seed gives the same result whatever
``batch_size``. Doubts about the result (outputs that look like probabilities, loss gradients that vanish)
are reported once per call as a :class:`~advlab.attacks.RobustnessWarning`; targeted examples already at
their target before the attack as an :class:`~advlab.attacks.AlreadyAtTargetWarning`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_int, check_labels, check_optional
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._mode import attack_mode, mismatch_hint, progress_callback
from advlab.attacks._registry import AttackSpec, attack_spec
from advlab.attacks._result import AttackResult
from advlab.attacks._validation import (
    check_input_shape,
    check_logits,
    clean_check,
    logits_doubts,
    model_bounds,
    validate_eps,
    validate_inputs,
)
from advlab.attacks._warnings import warn_call
from advlab.threat import LpBall, check_norm


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
        generator: source of randomness for random starts; same seed, same result, whatever ``batch_size``
            (randomness is drawn per example, see :meth:`AttackContext.random`). ``None``: a seed is taken
            from PyTorch's global RNG.
        batch_size: split ``x`` into chunks of this many examples (default: all at once); the result does
            not depend on it.
        true_labels: with ``targeted=True``, the true classes; a target equal to its true class is an error.
        clean_first: the kernel's first evaluation is at the clean input itself (FGSM, BIM, MI-FGSM, DeepFool):
            the engine then takes the clean logits from it instead of running a forward pass of its own
            beforehand. Either way the clean logits are validated before the kernel uses them.
        choose_targets: for attacks that choose their own targets (ILLC): ``y`` holds the true classes and
            ``choose_targets(clean_logits, y_chunk)`` gives each chunk's targets from its clean logits (no
            extra forward pass); the run is targeted and ``result.labels`` holds the targets.

    Raises:
        ValueError / TypeError: invalid inputs, labels, budgets or options; inputs of the wrong shape for a
            model that records its ``in_shape``; a model returning probabilities instead of logits; a model
            whose dtype or device does not match ``x``.

    Warns:
        RobustnessWarning: the model's outputs may not be logits (all in ``[0, 1]``, ...) or the loss gradient
            is exactly zero at inputs the attack must move: the result may overstate robustness.
        AlreadyAtTargetWarning: targeted examples the model already assigns to their target.
    """
    t0 = time.perf_counter()
    spec = attack_spec(name)
    bounds = model_bounds(model)
    norm, budgets, y, targeted, true_labels = validate_call(
        spec, config, bounds, model, x, y, eps=eps, norm=norm, targeted=targeted, generator=generator,
        batch_size=batch_size, true_labels=true_labels, choose_targets=choose_targets is not None,
    )
    n = x.shape[0]
    chunk = batch_size or n
    x_adv = torch.empty((len(budgets), *x.shape), dtype=x.dtype, device=x.device)
    adv_pred = torch.empty((len(budgets), n), dtype=torch.long, device=x.device)
    ctx = AttackContext(model, bounds, generator, targeted)
    ctx.begin_call(x)
    clean_logits: list[Tensor] = []
    labels = y if choose_targets is None else torch.empty_like(y)
    report = progress_callback()
    try:
        with attack_mode(model):
            for start in range(0, n, chunk):
                rows = slice(start, min(start + chunk, n))
                xb, yb = x[rows].detach(), y[rows]
                tb = None if true_labels is None else true_labels[rows]
                ctx.begin_chunk(xb, clean_check(yb, tb), tb, rows)
                if choose_targets is not None:
                    yb = labels[rows] = choose_targets(ctx.clean_logits(), yb)
                elif not clean_first:
                    ctx.clean_logits()
                ctx.labels = yb
                found = kernel(ctx, xb, yb, max(budgets)) if spec.min_norm else None
                for i, e in enumerate(budgets):
                    if e == 0.0:
                        x_adv[i, rows] = xb
                        continue
                    cand = found if found is not None else kernel(ctx, xb, yb, e)
                    x_adv[i, rows] = ctx.clip(xb + LpBall(norm, e).project(cand.detach() - xb))
                clean_logits.append(ctx.clean_logits())
                if report is not None:
                    report(rows.stop, n)
            # Re-check every budget on the final, clipped inputs.
            for i in range(len(budgets)):
                for start in range(0, n, chunk):
                    adv_pred[i, start : start + chunk] = ctx.logits(x_adv[i, start : start + chunk]).argmax(dim=1)
    except RuntimeError as err:
        hint = mismatch_hint(model, x)
        if hint is not None:
            raise TypeError(hint) from err
        raise
    all_logits = torch.cat(clean_logits)
    check_logits(all_logits, n)  # across chunks too (a chunk of one example cannot show a common row sum)
    result = assemble_result(
        name, config, x, x_adv, adv_pred, labels, all_logits.argmax(dim=1), norm=norm, budgets=budgets,
        targeted=targeted, true_labels=true_labels, batch_size=batch_size, n_forward=ctx.n_forward,
        n_backward=ctx.n_backward, n_queries=ctx.n_forward, t0=t0,
    )
    warn_call(name, n, logits_doubts(all_logits), ctx, result.n_already_at_target)
    return result


def validate_call(
    spec: AttackSpec, config: Any, bounds: tuple[float, float], model: object, x: Tensor, y: Tensor, *,
    eps: float | Sequence[float], norm: str, targeted: bool, generator: torch.Generator | None,
    batch_size: int | None, true_labels: Tensor | None, choose_targets: bool = False,
) -> tuple[str, tuple[float, ...], Tensor, bool, Tensor | None]:
    """The checks of an attack call shared by every engine: the config's type, the norm, the budgets, the
    inputs and labels (within ``bounds``; of the shape ``model`` records), batch size, generator and the
    targets against ``true_labels``. Returns ``(norm, budgets, y, targeted, true_labels)``, with
    ``choose_targets`` (an attack choosing its own targets): targeted, and ``true_labels = y``."""
    name = spec.name
    if not isinstance(config, spec.config):
        raise TypeError(f"attack {name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    norm = check_norm(norm, spec.norms)
    budgets = validate_eps(eps)
    y = validate_inputs(x, y, bounds)
    check_input_shape(model, x)
    check_optional("batch_size", batch_size, check_int)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if choose_targets:
        targeted, true_labels = True, y
    elif true_labels is not None:
        true_labels = check_labels(true_labels, x.shape[0], "true_labels", device=x.device)
        if targeted and bool((true_labels == y).any()):
            bad = int((true_labels == y).nonzero()[0, 0])
            raise ValueError(
                f"targeted attack: the target of example {bad} equals its true label ({int(y[bad])}); "
                f"choose targets different from the true classes (e.g. threat.choose_targets)"
            )
    return norm, budgets, y, targeted, true_labels


def assemble_result(
    name: str, config: Any, x: Tensor, x_adv: Tensor, adv_pred: Tensor, labels: Tensor, clean_pred: Tensor, *,
    norm: str, budgets: tuple[float, ...], targeted: bool, true_labels: Tensor | None, batch_size: int | None,
    n_forward: int, n_backward: int, n_queries: int, t0: float, queries: Tensor | None = None,
) -> AttackResult:
    """The :class:`AttackResult` of a finished call, from the final (projected, clipped) inputs ``x_adv``
    ``(B, N, ...)``, their re-checked predictions ``adv_pred`` ``(B, N)`` and the clean predictions."""
    success = adv_pred == labels if targeted else adv_pred != labels
    if targeted and true_labels is not None:
        clean_correct = clean_pred == true_labels
    else:
        clean_correct = clean_pred != labels if targeted else clean_pred == labels
    already = clean_pred == labels if targeted else torch.zeros_like(clean_correct)
    distances = torch.stack([LpBall(norm, 0.0).distance(x, x_adv[i]) for i in range(len(budgets))])
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    cfg = dataclasses.asdict(config)
    cfg.update({"norm": norm, "eps": list(budgets), "targeted": targeted, "batch_size": batch_size})
    return AttackResult(
        attack=name, eps=budgets, norm=norm, targeted=targeted, labels=labels, x_adv=x_adv.detach(),
        success=success, adv_pred=adv_pred, distances=distances, clean_correct=clean_correct, clean_pred=clean_pred,
        already_at_target=already,
        n_forward=n_forward, n_backward=n_backward, n_queries=n_queries,
        seconds=time.perf_counter() - t0, config=cfg, queries=queries,
    )
