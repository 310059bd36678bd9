"""Papernot's substitute-model attack: train a local model on an oracle's labels, grown by Jacobian-based
dataset augmentation, then attack it with any white-box attack and transfer the examples to the oracle.

Reference: Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical Black-Box Attacks against Machine
Learning", ASIACCS 2017 (Algorithm 1; periodic step size and reservoir sampling of its section 6).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from advlab._provenance import versions
from advlab._validate import check_batch, check_choice, check_float, check_int, check_labels, check_optional
from advlab.attacks import attack_mode, attack_spec, list_attacks
from advlab.models import create_model, list_models
from advlab.oracle import Oracle, QueryBudgetError
from advlab.train import Recipe, fit

__all__ = [
    "SUBSTITUTE_RECIPE",
    "BlackBoxReport",
    "Substitute",
    "jacobian_augmentation",
    "periodic_step",
    "schedule_queries",
    "shift_step",
    "split_seed_set",
    "substitute_attack",
    "train_substitute",
]

# Papernot et al. train each substitute for 10 epochs per round with lr 1e-2 and momentum 0.9.
SUBSTITUTE_RECIPE = Recipe(epochs=10, lr=1e-2, optimizer="sgd", momentum=0.9, batch_size=32, schedule=None)
JACOBIANS = ("logits", "probs")
CRAFT_LABELS = ("substitute", "oracle")
# Substitute options advlab uses by default where Papernot et al. give none, by zoo model: dropout makes the
# substitute's input gradients transfer worse (measured on MNIST, see benchmarks/README.md).
SUBSTITUTE_MODEL_OPTIONS: dict[str, dict[str, Any]] = {"cnn-small": {"conv_dropout": 0.0, "dropout": 0.0}}


def periodic_step(lam: float, rho: int, tau: int | None) -> float:
    """The step of augmentation ``rho`` (from 0): ``lam * (-1) ** floor(rho / tau)`` (Papernot et al.'s
    periodic step size; ``tau=None``: always ``lam``).

    Example:
        >>> [periodic_step(0.1, rho, 3) for rho in range(7)]
        [0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]
    """
    if tau is None:
        return lam
    return lam * (-1) ** (rho // tau)


def schedule_queries(n_seed: int, rounds: int, reservoir: int | None = None, reservoir_after: int = 3) -> int:
    """Oracle queries of a full :func:`train_substitute` run: the points of its last training set.

    ``rounds`` trainings are separated by ``rounds - 1`` augmentations; each doubles the set, except that
    with ``reservoir = kappa`` the augmentations after the first ``reservoir_after`` (sigma) add ``kappa``
    points each: ``n_seed * 2 ** min(rounds - 1, sigma) + kappa * max(0, rounds - 1 - sigma)`` (while the
    set holds at least ``kappa`` points).

    Example:
        >>> schedule_queries(150, 6), schedule_queries(150, 6, reservoir=100, reservoir_after=3)
        (4800, 1400)
    """
    aug = rounds - 1
    if reservoir is None:
        return n_seed * 2**aug
    doubled = n_seed * 2 ** min(aug, reservoir_after)
    total = doubled
    for _ in range(max(0, aug - reservoir_after)):
        total += min(reservoir, total)
    return total


def split_seed_set(y: Tensor, n_seed: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(seed_idx, rest_idx)``: ``n_seed`` examples drawn at random, balanced across the classes of
    ``y`` where possible (``n_seed // K`` each, the remainder to randomly chosen classes; a class with too few
    examples gives all it has and the others make up the difference), and the remaining indices in their
    original order. Papernot et al. hold out 150 test points as the attacker's seed set.

    Example:
        >>> import torch
        >>> seed_idx, rest = split_seed_set(torch.arange(100) % 10, 20)
        >>> torch.bincount(torch.arange(100)[seed_idx] % 10).tolist(), len(rest)
        ([2, 2, 2, 2, 2, 2, 2, 2, 2, 2], 80)
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of class indices, got {type(y).__name__}")
    y = check_labels(y, y.shape[0] if y.ndim else -1).cpu()
    n_seed = check_int("n_seed", n_seed)
    if n_seed >= len(y):
        raise ValueError(f"n_seed={n_seed} leaves no example to evaluate among {len(y)}; choose fewer seed points")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    k = len(classes)
    # A random order within each class, and a random order of the classes for the remainder.
    order = torch.randperm(len(y), generator=gen)
    members = [order[y[order] == c] for c in classes]
    counts = torch.tensor([len(m) for m in members])
    quota = torch.full((k,), n_seed // k)
    quota[torch.randperm(k, generator=gen)[: n_seed % k]] += 1
    take = torch.minimum(quota, counts)
    while int(take.sum()) < n_seed:  # classes short of examples: the others make up the difference
        room = counts - take
        open_classes = (room > 0).nonzero().flatten()
        need = n_seed - int(take.sum())
        extra = open_classes[torch.randperm(len(open_classes), generator=gen)[:need]]
        take[extra] += 1
    seed_idx = torch.cat([m[: int(t)] for m, t in zip(members, take, strict=True)])
    seed_idx = seed_idx[torch.randperm(len(seed_idx), generator=gen)]
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[seed_idx] = False
    return seed_idx, mask.nonzero().flatten()


def jacobian_augmentation(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    lam: float,
    *,
    jacobian: str = "logits",
    bounds: tuple[float, float] | None = None,
    batch_size: int = 512,
) -> Tensor:
    """New points ``clip(x + lam * sign(J_F(x)[label]))``: Papernot et al.'s Jacobian-based augmentation.

    ``J_F(x)[label]`` is the row of the substitute's Jacobian for the class the oracle gave ``x``: the
    gradient of that class's logit (``jacobian="logits"``, as the authors' reference implementation) or of
    its softmax probability (``"probs"``, the paper's ``F``) with respect to the input. All rows are computed
    at once per chunk of ``batch_size`` (each example's output depends on its own input only, in eval mode).

    Args:
        model: the substitute, returning logits; evaluated in eval mode with frozen parameters (restored after).
        x: ``(N, ...)`` points within the bounds. labels: ``(N,)`` the oracle's labels of ``x``.
        lam: the step (negative steps move against the gradient, see :func:`periodic_step`).
        jacobian: ``"logits"`` (default) or ``"probs"``.
        bounds: the input domain (default: the model's ``bounds``, else ``(0, 1)``).
        batch_size: examples per gradient computation.

    Returns:
        ``(N, ...)`` the new points, clipped to the bounds.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.full((3, 1, 2, 2), 0.5)
        >>> new = jacobian_augmentation(net, x, torch.tensor([0, 1, 0]), 0.1)
        >>> bool(((new - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    lam = check_float("lam", lam, minimum=None)
    check_choice("jacobian", jacobian, JACOBIANS)
    check_int("batch_size", batch_size)
    if bounds is None:
        b = getattr(model, "bounds", (0.0, 1.0))
        bounds = (float(b[0]), float(b[1]))
    labels = check_labels(labels, x.shape[0], "labels", device=x.device)
    out = torch.empty_like(x)
    with attack_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xs = x[start : start + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                scores = model(xs)
                if jacobian == "probs":
                    scores = torch.softmax(scores, dim=1)
                picked = scores.gather(1, labels[start : start + batch_size, None]).sum()
                (grad,) = torch.autograd.grad(picked, xs)
            out[start : start + batch_size] = (xs.detach() + lam * grad.sign()).clamp(bounds[0], bounds[1])
    return out


def _shift(x: Tensor, pixels: int, generator: torch.Generator, fill: float) -> Tensor:
    """``x`` ``(N, C, H, W)`` with each example translated by its own random ``(dy, dx)`` in
    ``[-pixels, pixels]^2``; the uncovered border takes ``fill``."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels, pixels, pixels, pixels), value=fill)
    off = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator, device=generator.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + off[0][:, None]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + off[1][:, None]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def shift_step(pixels: int, fill: float = 0.0) -> Any:
    """A training step (for :func:`advlab.train.fit`) on the batch translated at random by up to ``pixels``
    pixels in each direction (a fresh shift per example and per step, from the loop's generator), border
    filled with ``fill``: data augmentation of the oracle-labelled points without new queries. The labels stay
    the oracle's labels of the unshifted points, which a small shift changes only rarely (an approximation).

    Example:
        >>> import torch
        >>> from advlab.train import fit
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
        >>> len(fit(net, x, y, epochs=2, batch_size=4, step=shift_step(1)).epochs)
        2
    """
    from advlab.train import StepOutput

    pixels = check_int("pixels", pixels)

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: Any) -> Any:
        if x.ndim != 4:
            raise ValueError(f"shift augmentation needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        logits = model(_shift(x, pixels, ctx.generator, fill))
        return StepOutput(loss=torch.nn.functional.cross_entropy(logits, y), logits=logits)

    return step


@dataclass
class Substitute:
    """A substitute model trained by :func:`train_substitute`.

    Attributes:
        model: the substitute, in eval mode (with ``ensemble > 1``, an
            :class:`~advlab.blackbox.EnsembleSurrogate` of the members).
        members: the trained substitutes (one without an ensemble; ``members[0]`` drove the augmentation).
        x: ``(M, ...)`` its final training set ``S`` (every point the oracle labelled). labels: ``(M,)`` the
            oracle's labels of ``x``.
        queries: oracle queries the training made (the oracle's ``total_queries`` grew by this much).
        history: one dict per training round: ``round``, ``points`` (``|S_rho|``), ``new_points`` (labelled in
            this round), ``queries`` (so far), ``lam`` (the step that made this round's new points, ``None``
            for the seed set), ``train_agreement`` (the substitute's labels equal the oracle's on ``S_rho``),
            ``train_seconds``; with held-out points also ``accuracy`` (vs their true labels) and ``agreement``
            (with the oracle's labels, from ``oracle.verify``, not charged).
        stopped_early: the query budget ended the run before ``rounds`` rounds. stop_reason: why (or ``None``).
        seconds: wall time. config: every setting of the run.
    """

    model: nn.Module
    members: list[nn.Module]
    x: Tensor
    labels: Tensor
    queries: int
    history: list[dict[str, Any]]
    stopped_early: bool
    stop_reason: str | None
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready numbers of the run (the model and points are left out)."""
        return {
            "queries": self.queries, "points": int(self.x.shape[0]), "rounds_run": len(self.history),
            "stopped_early": self.stopped_early, "stop_reason": self.stop_reason, "seconds": self.seconds,
            "history": self.history, "config": self.config,
        }


def _labels_of(answer: Tensor) -> Tensor:
    """Top-1 labels of an oracle's answer (scores ``(N, K)`` or labels ``(N,)``)."""
    return (answer.argmax(dim=1) if answer.ndim == 2 else answer).long()


def _predict(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def _derive(seed: int, stream: int) -> int:
    return (seed * 6364136223846793005 + 1442695040888963407 * (stream + 1)) % (2**63)


def _build(model: str | nn.Module, x: Tensor, num_classes: int, bounds: tuple[float, float], dataset: str | None,
           options: Mapping[str, Any] | None, seed: int) -> nn.Module:
    if isinstance(model, nn.Module):
        if options:
            raise ValueError("model_options apply to a zoo model name; a given module is used as it is")
        return model
    if not isinstance(model, str) or model not in list_models():
        raise ValueError(f"unknown substitute model {model!r}; valid names: {', '.join(list_models())}")
    shape: dict[str, Any] = {"dataset": dataset} if dataset is not None else {
        "in_shape": tuple(x.shape[1:]), "num_classes": num_classes}
    net = create_model(model, bounds=bounds, generator=torch.Generator().manual_seed(seed), **shape,
                       **dict(options or {}))
    num = net.model_config.get("num_classes")
    if num != num_classes:
        raise ValueError(f"dataset {dataset!r} has {num} classes but the oracle answers {num_classes}")
    return net.to(x.device)


def train_substitute(
    oracle: Oracle,
    seed_x: Tensor,
    *,
    model: str | nn.Module = "cnn-small",
    model_options: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    rounds: int = 6,
    lam: float = 0.2,
    tau: int | None = 3,
    reservoir: int | None = None,
    reservoir_after: int = 3,
    epochs: int | None = None,
    recipe: Recipe | None = None,
    jacobian: str = "logits",
    ensemble: int = 1,
    final_epochs: int | None = None,
    shift: int = 0,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Substitute:
    """Trains a substitute of ``oracle`` from its labels alone (Papernot et al. 2017, Algorithm 1).

    Threat model: the attacker sees the oracle's top-1 labels only (scores, if the oracle answers them, are
    reduced to their argmax) and holds a small set of unlabelled inputs ``S_0 = seed_x``. Round ``rho``
    (from 0) labels the points of ``S_rho`` not yet labelled with the oracle (every one a counted query),
    trains the substitute on ``(S_rho, O(S_rho))`` (warm start: the same model keeps training, ``epochs``
    epochs a round), and, unless it is the last round, grows the set by Jacobian-based augmentation:
    ``S_{rho+1} = S_rho ∪ {clip(x + lambda_rho * sign(J_F(x)[O(x)])) : x in S_rho}`` with the periodic step
    ``lambda_rho = lam * (-1) ** floor(rho / tau)`` (:func:`jacobian_augmentation`, :func:`periodic_step`).
    With ``reservoir = kappa`` (section 6's reservoir sampling), augmentations after the first
    ``reservoir_after`` (sigma) add only ``kappa`` points, made from ``kappa`` points of ``S_rho`` drawn at
    random. A full run queries :func:`schedule_queries` points (``len(seed_x) * 2 ** (rounds - 1)`` without
    reservoir). When the next round's labels would exceed the oracle's ``max_total_queries``, the run stops
    there (``stopped_early``, ``stop_reason``) and returns the substitute trained so far.

    Improvements beyond the paper (all off by default, none costs a query): ``final_epochs`` trains the last
    round longer; ``shift`` trains on the labelled points randomly translated by up to ``shift`` pixels (the
    oracle's labels are kept, which is exact only where a small shift does not change the oracle's answer);
    ``ensemble = K`` trains ``K - 1`` more substitutes from other random initialisations on the final labelled
    set (``final_epochs`` epochs each, from scratch) and returns their fused
    :class:`~advlab.blackbox.EnsembleSurrogate` (Liu et al., ICLR 2017), whose loss the white-box attack then
    follows. Weight decay and other optimiser settings go through ``recipe``.

    Args:
        oracle: an :class:`advlab.Oracle` (``output="labels"`` is the paper's setting).
        seed_x: ``(N0, C, H, W)`` the initial points, within the oracle's bounds (Papernot et al.: 150 test
            points held out from the evaluation, see :func:`split_seed_set`).
        model: a zoo model name (default ``"cnn-small"``: two conv layers and two fully connected ones, as
            Papernot's MNIST substitute) or a module to train in place.
        model_options: hyper-parameters of the zoo model (default: :data:`SUBSTITUTE_MODEL_OPTIONS` for it,
            ``cnn-small`` without dropout; give ``{}`` for the zoo defaults). dataset: a registered dataset whose
            normalisation (and shape) the zoo model uses (default: none, shape from ``seed_x``).
        rounds: substitute training rounds (>= 1, default 6). lam: augmentation step (default 0.2; the paper's
            0.1 transfers less here, see below).
        tau: period of the step's sign flips (default 3; ``None``: never flips).
        reservoir: kappa, new points per augmentation after ``reservoir_after`` (default ``None``: none).
        reservoir_after: sigma (default 3).
        epochs: training epochs per round (default the recipe's, 10). recipe: optimiser settings
            (default :data:`SUBSTITUTE_RECIPE`: SGD, lr 1e-2, momentum 0.9, batch 32, as the paper).
        jacobian: ``"logits"`` or ``"probs"`` (see :func:`jacobian_augmentation`).
        ensemble: substitutes trained on the same labelled points (default 1: the paper's single one).
        final_epochs: epochs of the last round and of each extra ensemble member (default ``epochs``).
        shift: random translation of the training images, in pixels (default 0: none).
        x_val, y_val: optional labelled held-out points, for the history only (accuracy, agreement with the
            oracle through ``oracle.verify``, which is not charged); they never reach the training.
        seed: the substitute's initial weights, data order and dropout. generator: draws of the reservoir
            (default: from ``seed``).
        progress: a tqdm bar over the rounds on stderr.

    Returns:
        A :class:`Substitute`.

    Raises:
        ValueError / TypeError: bad settings or inputs. QueryBudgetError: the budget does not cover the seed
            set's labels.

    Example:
        >>> import torch, advlab
        >>> from advlab.oracle import Oracle
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> target = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
        >>> oracle = Oracle(target, output="labels")
        >>> sub = train_substitute(oracle, x[:20], model="softmax", rounds=3, epochs=1)
        >>> sub.queries, oracle.total_queries, [row["points"] for row in sub.history]
        (80, 80, [20, 40, 80])
    """
    t0 = time.perf_counter()
    if not isinstance(oracle, Oracle):
        raise TypeError(f"oracle must be an advlab.Oracle, got {type(oracle).__name__}")
    if model_options is None and isinstance(model, str):
        model_options = SUBSTITUTE_MODEL_OPTIONS.get(model)
    seed_x = check_batch(seed_x, oracle.bounds, "seed_x")
    rounds = check_int("rounds", rounds)
    lam = check_float("lam", lam, inclusive=False)
    tau = check_optional("tau", tau, check_int)
    reservoir = check_optional("reservoir", reservoir, check_int)
    reservoir_after = check_int("reservoir_after", reservoir_after, minimum=0)
    check_choice("jacobian", jacobian, JACOBIANS)
    ensemble = check_int("ensemble", ensemble)
    final_epochs = check_optional("final_epochs", final_epochs, check_int)
    shift = check_int("shift", shift, minimum=0)
    if shift and seed_x.ndim != 4:
        raise ValueError(f"shift needs image inputs (N, C, H, W), got seed_x of shape {tuple(seed_x.shape)}; "
                         f"use shift=0")
    if ensemble > 1 and isinstance(model, nn.Module):
        raise ValueError("ensemble > 1 builds its members from a zoo model name; pass model as a name, or "
                         "use ensemble=1 with a module")
    check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    if recipe is None:
        recipe = SUBSTITUTE_RECIPE
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an advlab.train.Recipe or None, got {type(recipe).__name__}")
    if epochs is not None:
        recipe = replace(recipe, epochs=check_int("epochs", epochs))
    last_recipe = recipe if final_epochs is None else replace(recipe, epochs=final_epochs)
    step_kw: dict[str, Any] = {"step": shift_step(shift, float(oracle.bounds[0]))} if shift else {}
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val (held-out points for the history), or neither")
    if x_val is not None and y_val is not None:
        x_val = check_batch(x_val, oracle.bounds, "x_val")
        y_val = check_labels(y_val, x_val.shape[0], "y_val", device=x_val.device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    draw = generator if generator is not None else torch.Generator().manual_seed(_derive(seed, 7))
    if isinstance(model, str) and model not in list_models():
        raise ValueError(f"unknown substitute model {model!r}; valid names: {', '.join(list_models())}")
    if not isinstance(model, (str, nn.Module)):
        raise TypeError(f"model must be a zoo model name or a torch module, got {type(model).__name__}")

    start_queries = oracle.total_queries
    remaining = oracle.remaining_total
    if remaining is not None and remaining < seed_x.shape[0]:
        raise QueryBudgetError(
            f"the oracle's budget leaves {remaining} queries, fewer than the {seed_x.shape[0]} seed points to label; "
            f"raise max_total_queries or use fewer seed points"
        )
    s_x = seed_x.detach().clone()
    s_y = _labels_of(oracle.query(s_x))
    num_classes = oracle.num_classes if oracle.num_classes is not None else int(s_y.max()) + 1
    net = _build(model, s_x, num_classes, oracle.bounds, dataset, model_options, seed)
    val_oracle = _labels_of(oracle.verify(x_val)) if x_val is not None else None

    history: list[dict[str, Any]] = []
    new_points, lam_used = s_x.shape[0], None
    stopped, reason = False, None
    bar = _bar(rounds) if progress else None
    try:
        for rho in range(rounds):
            t_round = time.perf_counter()
            this = last_recipe if rho == rounds - 1 else recipe
            with torch.random.fork_rng(devices=_cuda(s_x.device)):
                torch.manual_seed(_derive(seed, 100 + rho))  # dropout of this round (caller's RNG restored)
                fit(net, s_x, s_y, seed=_derive(seed, 200 + rho), **this.fit_kwargs(), **step_kw)
            net.eval()
            pred = _predict(net, s_x)
            row: dict[str, Any] = {
                "round": rho, "points": int(s_x.shape[0]), "new_points": new_points,
                "queries": oracle.total_queries - start_queries, "lam": lam_used,
                "train_agreement": float((pred == s_y).double().mean()),
                "train_seconds": round(time.perf_counter() - t_round, 3),
            }
            if x_val is not None and y_val is not None and val_oracle is not None:
                val_pred = _predict(net, x_val)
                row["accuracy"] = float((val_pred == y_val).double().mean())
                row["agreement"] = float((val_pred == val_oracle).double().mean())
            history.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()
                                 if k in ("points", "queries", "accuracy", "agreement")}, refresh=False)
            if rho == rounds - 1:
                break
            lam_used = periodic_step(lam, rho, tau)
            if reservoir is not None and rho >= reservoir_after:
                count = min(reservoir, s_x.shape[0])
                pick = torch.randperm(s_x.shape[0], generator=draw)[:count].to(s_x.device)
                parents, parent_y = s_x[pick], s_y[pick]
            else:
                parents, parent_y = s_x, s_y
            new = jacobian_augmentation(net, parents, parent_y, lam_used, jacobian=jacobian, bounds=oracle.bounds)
            remaining = oracle.remaining_total
            if remaining is not None and remaining < new.shape[0]:
                stopped = True
                reason = (f"round {rho + 1} would label {new.shape[0]} new points but the oracle's budget of "
                          f"{oracle.max_total_queries} leaves {remaining}; stopped after {rho + 1} round(s)")
                if last_recipe is not recipe:  # the round just trained is the last one: give it its extra epochs
                    more = replace(recipe, epochs=max(1, last_recipe.epochs - recipe.epochs))
                    with torch.random.fork_rng(devices=_cuda(s_x.device)):
                        torch.manual_seed(_derive(seed, 150 + rho))
                        fit(net, s_x, s_y, seed=_derive(seed, 250 + rho), **more.fit_kwargs(), **step_kw)
                    net.eval()
                break
            new_y = _labels_of(oracle.query(new))
            s_x, s_y = torch.cat([s_x, new]), torch.cat([s_y, new_y])
            new_points = int(new.shape[0])
    finally:
        if bar is not None:
            bar.close()
    net.eval()
    members: list[nn.Module] = [net]
    final: nn.Module = net
    if ensemble > 1:
        from advlab.blackbox._transfer import EnsembleSurrogate

        t_members = time.perf_counter()
        for j in range(1, ensemble):
            member = _build(model, s_x, num_classes, oracle.bounds, dataset, model_options, _derive(seed, 300 + j))
            with torch.random.fork_rng(devices=_cuda(s_x.device)):
                torch.manual_seed(_derive(seed, 400 + j))
                fit(member, s_x, s_y, seed=_derive(seed, 500 + j), **last_recipe.fit_kwargs(), **step_kw)
            members.append(member.eval())
        final = EnsembleSurrogate(members).eval()
        row = history[-1]
        row["ensemble_seconds"] = round(time.perf_counter() - t_members, 3)
        row["ensemble_train_agreement"] = float((_predict(final, s_x) == s_y).double().mean())
        if x_val is not None and y_val is not None and val_oracle is not None:
            val_pred = _predict(final, x_val)
            row["ensemble_accuracy"] = float((val_pred == y_val).double().mean())
            row["ensemble_agreement"] = float((val_pred == val_oracle).double().mean())
    config = {
        "model": model if isinstance(model, str) else type(model).__name__,
        "model_options": dict(model_options or {}), "dataset": dataset, "n_seed": int(seed_x.shape[0]),
        "rounds": rounds, "lam": lam, "tau": tau, "reservoir": reservoir, "reservoir_after": reservoir_after,
        "jacobian": jacobian, "recipe": recipe.to_dict(), "ensemble": ensemble, "final_epochs": last_recipe.epochs,
        "shift": shift, "seed": seed,
        "oracle": {"output": oracle.output, "max_total_queries": oracle.max_total_queries},
        "expected_queries": schedule_queries(int(seed_x.shape[0]), rounds, reservoir, reservoir_after),
    }
    return Substitute(
        model=final, members=members, x=s_x, labels=s_y, queries=oracle.total_queries - start_queries, history=history,
        stopped_early=stopped, stop_reason=reason, seconds=time.perf_counter() - t0, config=config,
    )


def _bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="substitute rounds", unit="round", file=sys.stderr, dynamic_ncols=True)


def _cuda(dev: torch.device) -> list[int]:
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


@dataclass
class BlackBoxReport:
    """The record of one substitute attack (:func:`substitute_attack`).

    Attributes:
        attack / eps / norm: the white-box attack run on the substitute and its budget.
        n: test points attacked. craft_labels: what the attack was given as labels (``"substitute"``: the
            substitute's own predictions, no queries; ``"oracle"``: the oracle's labels, ``n`` queries).
        oracle_clean_accuracy: the oracle's accuracy on the clean test points (``oracle.verify``, not charged).
        n_oracle_correct: how many of them it classifies correctly.
        oracle_misclassification: among the points the oracle classifies correctly, the fraction whose
            transferred adversarial example it misclassifies (the transfer success rate); ``NaN`` when none.
        oracle_error_rate: the fraction of all ``n`` adversarial examples the oracle misclassifies (true labels).
        substitute_accuracy: the substitute's accuracy on the clean test points (true labels).
        substitute_agreement: how often its labels equal the oracle's on them.
        substitute_success: the white-box attack's success rate on the substitute itself (against the
            crafting labels).
        queries: oracle queries of the substitute's training. attack_queries: queries of the attack phase.
        history: the substitute's per-round history (see :class:`Substitute`).
        stopped_early / stop_reason: the query budget cut the substitute's training short.
        seconds: ``{"substitute", "attack", "total"}`` wall times.
        config: every setting (substitute, attack, seeds, versions).
        substitute: the :class:`Substitute` (not serialised). x_adv: ``(n, ...)`` the adversarial examples
            (not serialised). oracle_adv_pred: the oracle's labels of them (not serialised).
    """

    attack: str
    eps: float
    norm: str
    n: int
    craft_labels: str
    oracle_clean_accuracy: float
    n_oracle_correct: int
    oracle_misclassification: float
    oracle_error_rate: float
    substitute_accuracy: float
    substitute_agreement: float
    substitute_success: float
    queries: int
    attack_queries: int
    history: list[dict[str, Any]]
    stopped_early: bool
    stop_reason: str | None
    seconds: dict[str, float]
    config: dict[str, Any]
    substitute: Substitute = field(repr=False)
    x_adv: Tensor = field(repr=False)
    oracle_adv_pred: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict of the record (NaN becomes ``None``)."""
        out = {
            "attack": self.attack, "eps": self.eps, "norm": self.norm, "n": self.n, "craft_labels": self.craft_labels,
            "oracle_clean_accuracy": self.oracle_clean_accuracy, "n_oracle_correct": self.n_oracle_correct,
            "oracle_misclassification": self.oracle_misclassification, "oracle_error_rate": self.oracle_error_rate,
            "substitute_accuracy": self.substitute_accuracy, "substitute_agreement": self.substitute_agreement,
            "substitute_success": self.substitute_success, "queries": self.queries,
            "attack_queries": self.attack_queries, "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason, "history": self.history, "seconds": self.seconds, "config": self.config,
        }
        return _json_safe(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def check_attack_name(attack: object) -> str:
    """``attack`` if it is a registered attack name, else ``ValueError`` listing the valid ones."""
    if not isinstance(attack, str) or attack not in list_attacks():
        raise ValueError(f"unknown attack {attack!r}; valid names: {', '.join(list_attacks())}")
    return attack


def substitute_attack(
    oracle: Oracle,
    seed_x: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    attack: str = "fgsm",
    eps: float = 0.3,
    norm: str | None = None,
    attack_options: Mapping[str, Any] | None = None,
    craft_labels: str = "oracle",
    model: str | nn.Module = "cnn-small",
    model_options: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    rounds: int = 6,
    lam: float = 0.2,
    tau: int | None = 3,
    reservoir: int | None = None,
    reservoir_after: int = 3,
    epochs: int | None = None,
    recipe: Recipe | None = None,
    jacobian: str = "logits",
    ensemble: int = 1,
    final_epochs: int | None = None,
    shift: int = 0,
    seed: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> BlackBoxReport:
    """Papernot et al.'s black-box attack: train a substitute of ``oracle`` (:func:`train_substitute`), craft
    adversarial examples of ``x_test`` on it with a white-box attack, and measure how many transfer.

    Threat model: label-only access to the oracle; ``eps`` and ``norm`` bound the perturbation as for the
    white-box ``attack`` (any registered attack, ``advlab.list_attacks()``, run untargeted on the substitute).

    Crafting labels: the attacker does not know the true labels. With ``craft_labels="oracle"`` (default) the
    attack is given the oracle's labels of ``x_test``, paid for with ``n`` queries (``attack_queries``, under
    the same budget); with ``"substitute"`` the substitute's own predictions (no query).

    Defaults: the paper's algorithm and schedule (6 rounds, tau 3, 10 epochs a round of SGD lr 1e-2 momentum
    0.9), with four choices that transfer better against MNIST ``cnn-small`` (benchmarks/README.md): lambda
    0.2 instead of 0.1, the oracle's labels for crafting, the margin loss for attacks that take a ``loss``
    (FGSM's sign of a cross-entropy gradient that vanishes where the substitute is sure), no dropout in a
    ``cnn-small`` substitute. Oracle misclassification of FGSM at eps 0.3, seed 0: 41.4 % with the paper's
    settings, 72.9 % with these (62.4 % with seed 1). Pass ``lam=0.1, craft_labels="substitute",
    attack_options={}, model_options={}`` for the paper's.

    Evaluation (the evaluator's, not the attacker's): the oracle's clean and adversarial predictions come from
    ``oracle.verify`` (not charged to the attacker's budget). ``oracle_misclassification`` is the fraction of
    the test points the oracle classifies correctly whose adversarial example it misclassifies;
    ``oracle_error_rate`` is its error over all adversarial examples.

    Args:
        oracle: the target behind an :class:`advlab.Oracle`.
        seed_x: ``(N0, ...)`` the attacker's initial points (keep them out of ``x_test``; see
            :func:`split_seed_set`).
        x_test, y_test: ``(N, ...)`` points to attack and their true classes (used for evaluation only).
        attack: the white-box attack (default ``"fgsm"``). eps: its budget (default 0.3). norm: its norm
            (default the attack's). attack_options: its hyper-parameters (e.g. ``{"steps": 40}``).
        craft_labels: ``"substitute"`` (default) or ``"oracle"``, see above.
        model ... progress: the substitute's training, see :func:`train_substitute` (``x_test`` and ``y_test``
            serve as its held-out points for the per-round history).
        generator: randomness of the attack (random starts); default from ``seed``.
        batch_size: the attack's chunk size.

    Returns:
        A :class:`BlackBoxReport`.

    Example:
        >>> import torch, advlab
        >>> from advlab.oracle import Oracle
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> target = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
        >>> rep = substitute_attack(Oracle(target, output="labels"), x[:20], x[20:60], y[20:60],
        ...                         model="softmax", rounds=2, epochs=1)
        >>> rep.queries, rep.attack_queries, 0.0 <= rep.substitute_accuracy <= 1.0
        (40, 40, True)
    """
    t0 = time.perf_counter()
    if not isinstance(oracle, Oracle):
        raise TypeError(f"oracle must be an advlab.Oracle, got {type(oracle).__name__}")
    spec = attack_spec(check_attack_name(attack))
    eps = check_float("eps", eps)
    if norm is not None and norm not in spec.norms:
        raise ValueError(f"attack {attack!r} does not support norm {norm!r}; supported: {', '.join(spec.norms)}")
    options = dict(attack_options or {})
    if attack_options is None and "loss" in spec.defaults():
        options["loss"] = "margin"  # the sign of a gradient that does not vanish where the softmax saturates
    unknown = sorted(set(options) - set(spec.defaults()))
    if unknown:
        raise ValueError(f"attack {attack!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(spec.defaults())) or '(none)'}")
    check_choice("craft_labels", craft_labels, CRAFT_LABELS)
    x_test = check_batch(x_test, oracle.bounds, "x_test")
    y_test = check_labels(y_test, x_test.shape[0], "y_test", device=x_test.device)
    check_optional("batch_size", batch_size, check_int)
    if tuple(seed_x.shape[1:]) != tuple(x_test.shape[1:]):
        raise ValueError(f"seed_x has examples of shape {tuple(seed_x.shape[1:])} but x_test has "
                         f"{tuple(x_test.shape[1:])}")

    sub = train_substitute(
        oracle, seed_x, model=model, model_options=model_options, dataset=dataset, rounds=rounds, lam=lam, tau=tau,
        reservoir=reservoir, reservoir_after=reservoir_after, epochs=epochs, recipe=recipe, jacobian=jacobian,
        ensemble=ensemble, final_epochs=final_epochs, shift=shift, x_val=x_test, y_val=y_test, seed=seed,
        progress=progress,
    )
    t_attack = time.perf_counter()
    n = x_test.shape[0]
    sub_pred = _predict(sub.model, x_test)
    before = oracle.total_queries
    if craft_labels == "oracle":
        remaining = oracle.remaining_total
        if remaining is not None and remaining < n:
            raise QueryBudgetError(
                f"crafting with the oracle's labels needs {n} queries but its budget leaves {remaining}; "
                f"use craft_labels='substitute' or a larger max_total_queries"
            )
        labels = _labels_of(oracle.query(x_test))
    else:
        labels = sub_pred
    attack_queries = oracle.total_queries - before
    gen = generator if generator is not None else torch.Generator().manual_seed(_derive(seed, 11))
    kwargs: dict[str, Any] = dict(options)
    if norm is not None:
        kwargs["norm"] = norm
    result = spec.fn(sub.model, x_test, labels, eps=eps, generator=gen, batch_size=batch_size, **kwargs)
    x_adv = result.x_adv[0]
    clean = _labels_of(oracle.verify(x_test)).to(y_test.device)
    adv = _labels_of(oracle.verify(x_adv)).to(y_test.device)
    correct = clean == y_test
    n_correct = int(correct.sum())
    fooled = float((adv[correct] != y_test[correct]).double().mean()) if n_correct else math.nan
    attack_seconds = time.perf_counter() - t_attack
    config = {
        "attack": attack, "eps": eps, "norm": result.norm, "attack_config": result.config,
        "craft_labels": craft_labels, "n": n, "seed": seed, "substitute": sub.config, "versions": versions(),
    }
    return BlackBoxReport(
        attack=attack, eps=eps, norm=result.norm, n=n, craft_labels=craft_labels,
        oracle_clean_accuracy=float(correct.double().mean()), n_oracle_correct=n_correct,
        oracle_misclassification=fooled, oracle_error_rate=float((adv != y_test).double().mean()),
        substitute_accuracy=float((sub_pred == y_test).double().mean()),
        substitute_agreement=float((sub_pred == clean).double().mean()),
        substitute_success=float(result.success[0].double().mean()),
        queries=sub.queries, attack_queries=attack_queries, history=sub.history, stopped_early=sub.stopped_early,
        stop_reason=sub.stop_reason,
        seconds={"substitute": round(sub.seconds, 3), "attack": round(attack_seconds, 3),
                 "total": round(time.perf_counter() - t0, 3)},
        config=config, substitute=sub, x_adv=x_adv.detach(), oracle_adv_pred=adv,
    )
