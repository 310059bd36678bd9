"""How robust is this model, really: :func:`robustness`, a worst-case cascade of an attack suite over a grid
of budgets, with per-stage cost, self-verified adversarial examples and self-checks; :func:`merge_found`
folds adversarial examples found by the self-checks into an evaluation."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from advlab._provenance import versions
from advlab._validate import check_int, check_optional
from advlab.attacks import attack_mode, attack_spec
from advlab.attacks._validation import check_input_shape, model_bounds, validate_eps, validate_inputs
from advlab.evaluate._evaluation import Evaluation, Found, StageCost
from advlab.evaluate._suites import Suite, SuiteAttack, resolve_suite
from advlab.threat import LpBall

ADAPTIVE = ("bpda", "eot", "dlr")
# Draws of the model's randomness averaged by adaptive="eot" (AutoAttack's randomised version uses 20).
EOT_SAMPLES = 20
# Slack of the ball check on a recorded adversarial example: float rounding of the projection, no more.
_ABS_TOL, _REL_TOL = 1e-6, 1e-5


def robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    eps: float | Sequence[float],
    suite: str | os.PathLike[str] | Suite = "standard",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    checks: bool = True,
    active_test: bool = False,
    adaptive: str | Sequence[str] | None = None,
    show_progress: bool = False,
) -> Evaluation:
    """Worst-case robust accuracy of ``model`` on ``(x, y)`` under an attack suite, at every budget.

    A cascade (as in AutoAttack, Croce & Hein, ICML 2020): the budgets are taken in ascending order and at each
    one every attack of the suite runs only on the points still robust (correctly classified, not broken by an
    earlier attack). A point broken at a smaller budget stays broken at the larger ones with the same
    adversarial example (the smaller ball lies inside the larger), so larger budgets attack only the
    survivors. A targeted stage (``targets="top"``) aims at the ``top_k`` most likely other classes of the
    clean input, one target after another, each on the points the previous target left robust. Every
    adversarial example is verified before it counts: inside the ball and the bounds, and misclassified by
    one more forward pass of ``model`` (not counted in the stages' cost). With ``checks`` the self-checks
    (:func:`advlab.evaluate._checks.run_checks`) then look for signs of gradient masking, and adversarial
    examples they find are merged in (worst case, :func:`merge_found`).

    The built-in suites (``advlab.evaluate.list_suites()``): ``standard`` (APGD-CE 100 steps, targeted
    APGD-DLR at the 3 most likely other classes, Square with 1,000 queries; each example stops at its first
    success), ``quick`` (20-step APGD-CE and APGD-T, for demos) and ``full`` (AutoAttack-like budgets).
    ``standard`` keeps 3 targets and 1,000 queries where AutoAttack spends 9 targets, FAB-T and 5,000 queries:
    on the points that survive every stage (which dominate the cost of a robust model) it costs at most
    ``200 + 600`` gradient passes and 1,000 queries per point, against roughly 4,000 and 5,000 for AutoAttack;
    points broken early cost a fraction of that thanks to the per-example early stop.

    Threat model: the L_p ball (``norm``: those of the suite, ``linf`` or ``l2`` for the built-ins) of radius
    ``eps`` around each input, intersected with the model's bounds; untargeted (any misclassification).

    Args:
        model: returns logits for inputs within its bounds (``model.bounds``, default ``(0, 1)``).
        x: ``(N, ...)`` inputs within the bounds. y: ``(N,)`` true classes.
        norm: the threat model's norm (default ``"linf"``).
        eps: one budget or several (raw input units); evaluated in ascending order, duplicates refused.
        suite: a registered suite's name (default ``"standard"``), a :class:`Suite`, or the path of a
            ``.toml`` suite file (see :func:`~advlab.evaluate.load_suite`).
        batch_size: examples per chunk of every attack and check (default: all at once); the result does not
            depend on it.
        generator: every random number (random starts, Square's squares, the checks) derives from it: the same
            seed gives the same evaluation whatever ``batch_size``. ``None``: a seed from PyTorch's global RNG.
        checks: run the self-checks after the cascade (default ``True``).
        active_test: also run the active test of the checks (a binarised model with a known adversarial
            example; slower).
        adaptive: ``None``, one of ``"bpda"``, ``"eot"``, ``"dlr"`` or a list of them: ``bpda`` attacks a
            :class:`~advlab.defenses.Defended` model through :func:`~advlab.defenses.bpda` (its transform's
            gradient replaced by the identity's), ``eot`` attacks the mean logits of
            :data:`EOT_SAMPLES` draws of a randomised model (:class:`~advlab.defenses.EOT`), both for the
            gradient attacks only (black-box stages query the model as it is); ``dlr`` replaces the
            cross-entropy loss of every stage by the scale-invariant DLR loss (for saturated softmax outputs).
        show_progress: a progress bar over the stages on stderr (tqdm).

    Returns:
        An :class:`~advlab.evaluate.Evaluation`: ``robust``/``broken_by``/``distances`` ``(E, N)``, ``x_adv``
        ``(E, N, ...)``, the cost of every (budget, attack) stage, the checks, and ``config`` (the suite with
        every parameter, norm, budgets, batch size, seed, adaptive options, versions).

    Raises:
        ValueError / TypeError: a bad input, budget, suite (the message lists the valid suites), norm the
            suite does not support, or ``adaptive`` option.

    Example:
        >>> import torch, advlab
        >>> from advlab.evaluate._robustness import robustness
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
        >>> ev = robustness(model, x, y, eps=[0.0, 0.1], suite="quick", checks=False,
        ...                 generator=torch.Generator().manual_seed(0))
        >>> ev.eps, ev.attack_names, ev.robust.shape
        ([0.0, 0.1], ['apgd-ce', 'apgd-t'], torch.Size([2, 6]))
    """
    t0 = time.perf_counter()
    the_suite = resolve_suite(suite)
    if not isinstance(norm, str) or norm not in the_suite.norms:
        raise ValueError(f"suite {the_suite.name!r} supports norms {', '.join(the_suite.norms)}; got {norm!r}")
    budgets = sorted(validate_eps(eps))
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"eps has duplicate budgets ({', '.join(f'{e:g}' for e in budgets)}); give each once")
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor (N, ...), got {type(x).__name__}")
    bounds = model_bounds(model)
    y = validate_inputs(x, y, bounds)
    check_input_shape(model, x)
    check_optional("batch_size", batch_size, check_int)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    modes = adaptive_modes(adaptive)
    grad_model = adaptive_model(model, modes)
    stages = [_adapted(a, modes) for a in the_suite.attacks]
    base_seed = _base_seed(generator)

    n, n_budgets = x.shape[0], len(budgets)
    x = x.detach()
    clean_logits = _logits(model, x, batch_size)
    num_classes = clean_logits.shape[1]
    clean_correct = clean_logits.argmax(dim=1) == y
    # Classes other than the true one, most likely first (stable: ties by class index).
    others = torch.sort(clean_logits.scatter(1, y[:, None], -math.inf), dim=1, descending=True, stable=True)[1]
    robust = torch.zeros((n_budgets, n), dtype=torch.bool, device=x.device)
    broken_by = torch.full((n_budgets, n), -1, dtype=torch.int64, device=x.device)
    distances = torch.full((n_budgets, n), math.nan, dtype=x.dtype, device=x.device)
    x_adv = x.unsqueeze(0).repeat(n_budgets, *([1] * x.ndim))
    alive = clean_correct.clone()
    costs: list[StageCost] = []
    with _bar(show_progress, n_budgets * len(stages), the_suite.name) as tick:
        for ei, e in enumerate(budgets):
            if ei > 0:  # broken at a smaller budget: the same example breaks the point here
                broken_by[ei], distances[ei], x_adv[ei] = broken_by[ei - 1], distances[ei - 1], x_adv[ei - 1]
            if e == 0.0:
                robust[ei] = alive
                tick(len(stages), alive)
                continue
            for si, stage in enumerate(stages):
                costs.append(_run_stage(
                    stage, si, ei, e, model if _is_blackbox(stage) else grad_model, model, x, y, others,
                    num_classes, norm, bounds, batch_size, base_seed, alive, broken_by, distances, x_adv,
                ))
                tick(1, alive)
            robust[ei] = alive
    config: dict[str, Any] = {
        "suite": the_suite.to_dict(), "norm": norm, "eps": budgets, "n": n, "batch_size": batch_size,
        "seed": generator.initial_seed() if generator is not None else None,
        "seed_source": "generator" if generator is not None else "torch global RNG",
        "adaptive": list(modes), "eot_samples": EOT_SAMPLES if "eot" in modes else None,
        "stages_run": [a.to_dict() for a in stages], "checks": checks, "active_test": active_test,
        "model_hash": _model_hash(model), "versions": versions(),
    }
    evaluation = Evaluation(
        suite=the_suite.name, norm=norm, eps=[float(e) for e in budgets], n=n, clean_correct=clean_correct,
        robust=robust, broken_by=broken_by, distances=distances, x_adv=x_adv,
        attack_names=[a.name for a in the_suite.attacks], stages=costs, config=config, seconds=0.0, x=x, y=y,
    )
    if checks:
        from advlab.evaluate._checks import run_checks

        check_gen = torch.Generator().manual_seed(_derive(base_seed, "checks"))
        found_list: list[Found]
        evaluation.checks, found_list = run_checks(model, x, y, evaluation, generator=check_gen,
                                                   active_test=active_test, suite=the_suite)
        merge_found(evaluation, found_list, model, batch_size=batch_size)
    evaluation.seconds = time.perf_counter() - t0
    return evaluation


def robustness_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    eps: float | Sequence[float],
    norm: str = "linf",
    suite: str | os.PathLike[str] | Suite = "standard",
    data: str | None = None,
    split: str = "test",
    n: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int | None = None,
    checks: bool = True,
    active_test: bool = False,
    adaptive: str | Sequence[str] | None = None,
    show_progress: bool = False,
) -> Evaluation:
    """Loads a checkpoint and the first ``n`` points of a dataset split and runs :func:`robustness` with a
    generator seeded by ``seed``; the evaluation's config also names the checkpoint, its model and hash, the
    data, the seed and the device.

    ``data`` defaults to the dataset recorded in the checkpoint. Raises ``ValueError`` (bad names, shapes or
    values) or ``FileNotFoundError`` (missing checkpoint or data) with a message naming the fix.
    """
    from advlab.models import load_checkpoint_data

    the_suite = resolve_suite(suite)  # a bad suite fails before the checkpoint is read
    loaded = load_checkpoint_data(checkpoint, data=data, split=split, data_root=data_root, device=device)
    dev = loaded.device
    x, y = loaded.x[:n].to(dev), loaded.y[:n].to(dev)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    evaluation = robustness(loaded.model, x, y, norm=norm, eps=eps, suite=the_suite, batch_size=batch_size,
                            generator=generator, checks=checks, active_test=active_test, adaptive=adaptive,
                            show_progress=show_progress)
    evaluation.config.update({**loaded.provenance(), "n_requested": n, "seed": seed, "device": str(dev)})
    return evaluation


def adaptive_modes(adaptive: str | Sequence[str] | None) -> tuple[str, ...]:
    """``adaptive`` as a tuple of distinct options from :data:`ADAPTIVE` (in the order given)."""
    if adaptive is None:
        return ()
    items = [adaptive] if isinstance(adaptive, str) else list(adaptive)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or item not in ADAPTIVE:
            raise ValueError(f"unknown adaptive option {item!r}; valid options: {', '.join(ADAPTIVE)}")
        if item not in out:
            out.append(item)
    return tuple(out)


def adaptive_model(model: nn.Module, modes: Sequence[str]) -> nn.Module:
    """The model the gradient attacks see: ``bpda(model)`` and/or ``EOT(..., EOT_SAMPLES)`` per ``modes``."""
    from advlab.defenses import EOT, Defended, bpda

    out = model
    if "bpda" in modes:
        if not isinstance(model, Defended):
            raise ValueError(
                f"adaptive='bpda' needs an advlab.defenses.Defended model (an input transformation in front of a "
                f"classifier), got {type(model).__name__}; wrap it as Defended(transform, classifier), or drop "
                f"'bpda' (a model without a transform has nothing to approximate)")
        out = bpda(model)
    if "eot" in modes:
        out = EOT(out, samples=EOT_SAMPLES)
    return out


def _adapted(stage: SuiteAttack, modes: Sequence[str]) -> SuiteAttack:
    """``stage`` with its cross-entropy loss replaced by DLR when ``"dlr"`` is in ``modes``."""
    if "dlr" not in modes:
        return stage
    params = stage.full_params()
    if params.get("loss") != "ce":
        return stage
    return SuiteAttack(stage.attack, {**stage.params, "loss": "dlr"}, targets=stage.targets, top_k=stage.top_k,
                       name=stage.name)


def _is_blackbox(stage: SuiteAttack) -> bool:
    """A score- or decision-based attack (it has a query budget): it sees the model as it is."""
    return "max_queries" in stage.full_params()


def pass_budget(stage: SuiteAttack, num_classes: int | None = None) -> int:
    """The most passes (forward + backward, or queries) ``stage`` may spend on one example, the engine's
    clean pass and re-check included: ``2 * steps * restarts`` (+1 per restart beyond the first) for an
    iterative gradient attack, ``max_queries`` for a black-box one, times the number of targets."""
    p = stage.full_params()
    restarts = int(p.get("restarts", 1) or 1)
    if "max_queries" in p:
        per = int(p["max_queries"])
    elif "steps" in p:
        per = 2 * int(p["steps"]) * restarts + (restarts if restarts > 1 else 0)
    else:
        per = 2 * restarts
    targets = 1
    if stage.targets == "top":
        targets = stage.top_k if num_classes is None else min(stage.top_k, max(num_classes - 1, 1))
    return targets * (per + 2)


def _run_stage(
    stage: SuiteAttack, si: int, ei: int, eps: float, attack_model: nn.Module, model: nn.Module, x: Tensor,
    y: Tensor, others: Tensor, num_classes: int, norm: str, bounds: tuple[float, float], batch_size: int | None,
    base_seed: int, alive: Tensor, broken_by: Tensor, distances: Tensor, x_adv: Tensor,
) -> StageCost:
    """Runs one stage on the points ``alive`` at budget ``eps`` and records what it breaks (in place)."""
    t0 = time.perf_counter()
    spec = attack_spec(stage.attack)
    n_attacked = int(alive.sum())
    n_broken = n_forward = n_backward = n_queries = 0
    k_max = min(stage.top_k, num_classes - 1) if stage.targets == "top" else 1
    for k in range(k_max):
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        kwargs: dict[str, Any] = dict(stage.params)
        labels = y[idx]
        if stage.targets == "top":
            labels = others[idx, k]
            kwargs.update(targeted=True, true_labels=y[idx])
        gen = torch.Generator().manual_seed(_derive(base_seed, f"stage:{ei}:{si}:{k}"))
        result = spec.fn(attack_model, x[idx], labels, eps=eps, norm=norm, generator=gen, batch_size=batch_size,
                         **kwargs)
        n_forward += result.n_forward
        n_backward += result.n_backward
        n_queries += result.n_queries
        hit = result.adv_pred[0] != y[idx]  # any misclassification breaks the point, the target or another
        cand_idx = idx[hit]
        if cand_idx.numel() == 0:
            continue
        cand = result.x_adv[0][hit]
        ok, dist = verify(model, x[cand_idx], cand, y[cand_idx], eps, norm, bounds, batch_size)
        rows = cand_idx[ok]
        alive[rows] = False
        broken_by[ei, rows] = si
        distances[ei, rows] = dist[ok].to(distances.dtype)
        x_adv[ei, rows] = cand[ok]
        n_broken += int(rows.numel())
    return StageCost(
        eps=float(eps), attack=stage.name, n_attacked=n_attacked, n_broken=n_broken,
        robust_accuracy=float(alive.double().mean()), n_forward=n_forward, n_backward=n_backward,
        n_queries=n_queries, seconds=time.perf_counter() - t0, pass_budget=pass_budget(stage, num_classes),
    )


def verify(
    model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, eps: float, norm: str, bounds: tuple[float, float],
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Checks candidate adversarial examples: ``(ok (K,) bool, distances (K,))``, ``ok`` where ``x_adv`` lies in
    the ``norm`` ball of radius ``eps`` around ``x`` (float rounding aside), inside ``bounds`` and is
    misclassified by one forward pass of ``model``."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device), torch.zeros(0, dtype=x.dtype, device=x.device)
    dist = LpBall(norm, 0.0).distance(x, x_adv)
    in_ball = dist <= eps + _ABS_TOL + _REL_TOL * eps
    flat = x_adv.reshape(x_adv.shape[0], -1)
    in_bounds = (flat >= bounds[0]).all(dim=1) & (flat <= bounds[1]).all(dim=1) & torch.isfinite(flat).all(dim=1)
    wrong = _logits(model, x_adv, batch_size).argmax(dim=1) != y
    return in_ball & in_bounds & wrong, dist


def merge_found(
    evaluation: Evaluation, found: Found | Sequence[Found], model: nn.Module, *, batch_size: int | None = None,
) -> int:
    """Merges adversarial examples found outside the suite (by the self-checks) into ``evaluation``, worst case.

    Each :class:`~advlab.evaluate.Found` names a budget and points; a point the evaluation still counts as
    robust at that budget becomes broken there and at every larger budget where it is still robust (the ball
    grows), by the Found's ``name`` (appended to ``attack_names`` when new), with its distance and adversarial
    example. Every example is checked first: inside the ball (its distance recomputed) and the model's bounds,
    and misclassified by one forward pass of ``model``; those that fail are left out. Points misclassified
    when clean, or already broken at that budget, are left as they are.

    Returns:
        The number of (budget, point) entries that changed from robust to broken.

    Example:
        >>> import torch, advlab
        >>> from advlab.evaluate._robustness import merge_found, robustness
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> ev = robustness(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=[0.0], suite="quick", checks=False)
        >>> merge_found(ev, [], model)
        0
    """
    items = [found] if isinstance(found, Found) else list(found)
    changed = 0
    bounds = model_bounds(model)
    for item in items:
        if not isinstance(item, Found):
            raise TypeError(f"merge_found takes Found objects, got {type(item).__name__}")
        if not 0 <= item.eps_index < len(evaluation.eps):
            raise ValueError(f"Found {item.name!r}: eps_index {item.eps_index} is out of range for the "
                             f"{len(evaluation.eps)} budgets of the evaluation")
        index = torch.as_tensor(item.index, dtype=torch.int64, device=evaluation.robust.device).reshape(-1)
        if index.numel() == 0:
            continue
        if int(index.min()) < 0 or int(index.max()) >= evaluation.n:
            raise ValueError(f"Found {item.name!r}: point indices must lie in [0, {evaluation.n}), "
                             f"got {int(index.min())}..{int(index.max())}")
        cand = item.x_adv.to(evaluation.x.device, evaluation.x.dtype)
        if cand.shape != (index.numel(), *evaluation.x.shape[1:]):
            raise ValueError(f"Found {item.name!r}: x_adv has shape {tuple(cand.shape)}, expected "
                             f"{(index.numel(), *evaluation.x.shape[1:])}")
        j = item.eps_index
        open_ = evaluation.robust[j, index]
        index, cand = index[open_], cand[open_]
        if index.numel() == 0:
            continue
        ok, dist = verify(model, evaluation.x[index], cand, evaluation.y[index], evaluation.eps[j],
                          evaluation.norm, bounds, batch_size)
        index, cand, dist = index[ok], cand[ok], dist[ok]
        if index.numel() == 0:
            continue
        if item.name not in evaluation.attack_names:
            evaluation.attack_names.append(item.name)
        code = evaluation.attack_names.index(item.name)
        for jj in range(j, len(evaluation.eps)):
            still = evaluation.robust[jj, index]
            rows = index[still]
            evaluation.robust[jj, rows] = False
            evaluation.broken_by[jj, rows] = code
            evaluation.distances[jj, rows] = dist[still].to(evaluation.distances.dtype)
            evaluation.x_adv[jj, rows] = cand[still]
            changed += int(rows.numel())
    return changed


def _logits(model: nn.Module, x: Tensor, batch_size: int | None) -> Tensor:
    """Logits of ``model`` on ``x`` in chunks of ``batch_size``, in evaluation mode, without gradients."""
    step = batch_size or max(x.shape[0], 1)
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + step]) for i in range(0, x.shape[0], step)])


def _base_seed(generator: torch.Generator | None) -> int:
    """One 62-bit seed from ``generator`` (or PyTorch's global RNG) from which every stage's seed derives."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def _derive(base: int, label: str) -> int:
    """A 62-bit seed derived from ``base`` and ``label`` (independent streams for every stage)."""
    digest = hashlib.sha256(f"{base}:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _model_hash(model: nn.Module) -> str | None:
    from advlab.models import model_hash

    try:
        return model_hash(model)
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return None


@contextmanager
def _bar(show: bool, total: int, name: str) -> Iterator[Any]:
    """A tqdm bar over the stages (``tick(steps, alive)``), or a no-op."""
    if not show:
        yield lambda steps, alive: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"suite {name}", unit="stage", file=sys.stderr, dynamic_ncols=True)

    def tick(steps: int, alive: Tensor) -> None:
        bar.set_postfix(robust=f"{float(alive.double().mean()):.1%}")
        bar.update(steps)

    try:
        yield tick
    finally:
        bar.close()
