"""The machinery of the failing defenses (:mod:`advlab.defenses._failing`): :class:`FailingDefense` (what the
defender deploys, its undefended baseline, a naive and an adaptive :class:`AttackPlan`), judging crafted examples
on the defended model, and the training helpers the builders share (zoo classifiers with a step function of
one's own, Gaussian-noise training, an autoencoder denoiser), all on the project's training engine; and
:func:`evaluate_failing`, which trains a registered failing defense and runs its three attacks."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_bool, check_float, check_int, check_optional
from advlab.attacks import AttackResult, attack_mode, fgsm, pgd
from advlab.defenses._registry import defense_spec
from advlab.models import create_model
from advlab.models.factory import reset_parameters
from advlab.train import evaluate_accuracy, fit, get_recipe, prepare_model
from advlab.train.steps import StepContext, StepFn, StepOutput, standard_step

ATTACKS = ("pgd", "fgsm")


@dataclass(frozen=True)
class AttackPlan:
    """One side of a failing defense's evaluation: which attack, on which model's gradients.

    Attributes:
        attack: ``pgd`` or ``fgsm`` (:mod:`advlab.attacks`).
        model: the model the attack differentiates (the defended model, a surrogate, an EOT or BPDA view).
        description: what is attacked, in words (recorded in the result's config as ``crafted_on``).
        restarts: PGD restarts.
        early_stop: PGD stops each example at the first iterate that fools ``model`` (the verdict of the
            model attacked, which a careless evaluation trusts; see :func:`advlab.attacks.pgd`).
    """

    attack: str
    model: nn.Module
    description: str
    restarts: int = 1
    early_stop: bool = False

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        check_int("restarts", self.restarts)
        check_bool("early_stop", self.early_stop)


@dataclass
class FailingDefense:
    """A trained failing defense with its baseline and its two attacks.

    Attributes:
        name: the registered name. config: its options.
        defended: what the defender deploys (an ``nn.Module`` in eval mode with ``bounds``).
        undefended: the same classifier trained without the defense (same seed and recipe).
        naive_plan / adaptive_plan: the naive and the adaptive attack.
        generators: the generators of the defended model's randomness, reseeded from the attack's generator
            before every attack and accuracy (empty for deterministic defenses).
    """

    name: str
    config: Any
    defended: nn.Module
    undefended: nn.Module
    naive_plan: AttackPlan
    adaptive_plan: AttackPlan
    generators: tuple[torch.Generator, ...] = ()

    def reseed(self, generator: torch.Generator | None = None) -> None:
        """Reseeds the defended model's randomness from ``generator`` (the global RNG when ``None``)."""
        for g in self.generators:
            g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))

    def naive(self, x: Tensor, y: Tensor, *, eps: float, steps: int = 40,
              generator: torch.Generator | None = None) -> AttackResult:
        """The naive attack at L∞ budget ``eps``, judged on :attr:`defended` (see :meth:`run`)."""
        return self.run(self.naive_plan, x, y, eps=eps, steps=steps, generator=generator)

    def adaptive(self, x: Tensor, y: Tensor, *, eps: float, steps: int = 40,
                 generator: torch.Generator | None = None) -> AttackResult:
        """The adaptive attack at L∞ budget ``eps``, judged on :attr:`defended` (see :meth:`run`)."""
        return self.run(self.adaptive_plan, x, y, eps=eps, steps=steps, generator=generator)

    def baseline(self, x: Tensor, y: Tensor, *, eps: float, steps: int = 40,
                 generator: torch.Generator | None = None) -> AttackResult:
        """PGD on the undefended model at L∞ budget ``eps``."""
        return pgd(self.undefended, x, y, eps=eps, steps=steps, generator=generator)

    def run(self, plan: AttackPlan, x: Tensor, y: Tensor, *, eps: float, steps: int = 40,
            generator: torch.Generator | None = None) -> AttackResult:
        """Crafts L∞ examples with ``plan`` (``steps`` PGD iterations) and judges them on :attr:`defended`:
        success, predictions and clean correctness come from the defended model (one draw of its randomness
        per input, reseeded from ``generator``) whatever model crafted them."""
        check_float("eps", eps)
        check_int("steps", steps)
        self.reseed(generator)
        if plan.attack == "fgsm":
            result = fgsm(plan.model, x, y, eps=eps, generator=generator)
        else:
            result = pgd(plan.model, x, y, eps=eps, steps=steps, restarts=plan.restarts, early_stop=plan.early_stop,
                         generator=generator)
        if plan.model is not self.defended or self.generators:
            result = _judged_on(result, self.defended, x)
        config = {"attack": plan.attack, **result.config, "crafted_on": plan.description}
        return dataclasses.replace(result, config=config)


def _judged_on(result: AttackResult, model: nn.Module, x: Tensor, batch_size: int = 512) -> AttackResult:
    """``result`` with success, predictions and clean correctness re-checked on ``model``."""

    def predict(inputs: Tensor) -> Tensor:
        return torch.cat([model(inputs[i : i + batch_size]).argmax(dim=1) for i in range(0, len(inputs), batch_size)])

    with torch.no_grad(), attack_mode(model):
        clean_pred = predict(x)
        adv_pred = torch.stack([predict(xa) for xa in result.x_adv])
    labels = result.labels
    n = x.shape[0] * (1 + len(result.x_adv))
    return dataclasses.replace(
        result, clean_pred=clean_pred, clean_correct=clean_pred == labels, adv_pred=adv_pred,
        success=adv_pred != labels, n_forward=result.n_forward + n, n_queries=result.n_queries + n,
    )


# --------------------------------------------------------------------------------------------------------
# training


def train_classifier(
    model: str, x_train: Tensor, y_train: Tensor, *, dataset: str | None = None, seed: int = 0,
    epochs: int | None = None, step: StepFn = standard_step, recipe_overrides: dict[str, Any] | None = None,
    **hparams: Any,
) -> nn.Module:
    """A zoo model trained by :func:`advlab.train.fit` with its recipe, as :func:`advlab.train.train_model`
    trains it (seeded initialisation, dropout from the global RNG seeded inside ``fork_rng``), but with a
    step function, recipe overrides and model hyper-parameters of one's own. Returned in eval mode."""
    recipe = get_recipe(model, dataset, epochs=epochs, **(recipe_overrides or {}))
    if dataset is not None:
        shape: dict[str, Any] = {"dataset": dataset}
    else:
        shape = {"in_shape": tuple(x_train.shape[1:]), "num_classes": max(int(y_train.max()) + 1, 2)}
    dev = x_train.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        net = create_model(model, generator=torch.Generator().manual_seed(seed), **shape, **hparams)
        prepare_model(net, x_train, generator=torch.Generator().manual_seed(seed))
        fit(net, x_train, y_train, seed=seed, device=dev, step=step, **recipe.fit_kwargs())
    return net.eval()


def noise_step(sigma: float, bounds: tuple[float, float] = (0.0, 1.0)) -> StepFn:
    """A step function training on ``clip(x + N(0, sigma^2))``, noise drawn from ``ctx.generator``."""

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        logits = model((x + sigma * noise).clamp(*bounds))
        return StepOutput(F.cross_entropy(logits, y), logits=logits)

    return step


class Denoiser(nn.Module):
    """A fully connected autoencoder mapping inputs ``(N, ...)`` within ``bounds`` to inputs within ``bounds``
    (``low + (high - low) * sigmoid``) through a bottleneck of ``hidden`` units."""

    def __init__(self, in_shape: Sequence[int], hidden: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        d = 1
        for side in in_shape:
            d *= int(side)
        self.in_shape = tuple(int(s) for s in in_shape)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d),
        )

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.bounds
        return (low + (high - low) * torch.sigmoid(self.net(x))).reshape(-1, *self.in_shape)


def train_denoiser(x_train: Tensor, y_train: Tensor, *, sigma: float, hidden: int, epochs: int,
                   bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Denoiser:
    """A :class:`Denoiser` trained by :func:`advlab.train.fit` to map ``clip(x + N(0, sigma^2))`` to ``x``
    (mean squared error; Adam, lr 1e-3, batch 64), initialised and noised from ``seed``. In eval mode."""

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        return StepOutput(F.mse_loss(model((x + sigma * noise).clamp(*bounds)), x))

    net = Denoiser(x_train.shape[1:], hidden, bounds)
    reset_parameters(net, torch.Generator().manual_seed(seed))
    fit(net, x_train, y_train, epochs=epochs, batch_size=64, lr=1e-3, step=step, seed=seed, device=x_train.device)
    return net.eval()


# --------------------------------------------------------------------------------------------------------
# evaluation


def evaluate_failing(
    name: str,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    eps: float,
    options: Any = None,
    model: str = "mlp",
    dataset: str | None = None,
    seed: int = 0,
    epochs: int | None = None,
    steps: int = 40,
) -> dict[str, Any]:
    """Trains the failing defense ``name`` and its baseline and attacks both: JSON-ready numbers.

    Threat model: L∞ ball of radius ``eps`` within the model's bounds. Runs PGD on the undefended model,
    then the defense's naive and adaptive attacks on the defended model; every attack takes its random
    starts (and the defended model its randomness) from a generator seeded with ``seed``.

    Args:
        name: a registered failing defense (``list_defenses("failing")``).
        x_train, y_train: training data ``(N, C, H, W)`` within ``[0, 1]`` and labels ``(N,)``.
        x_test, y_test: the examples attacked.
        eps: L∞ budget in raw input units (digits: 0.1-0.3).
        options: the defense's options (a mapping or its config; ``None`` for the defaults).
        model: a zoo model name (default ``mlp``). dataset: the registered dataset the tensors come from
            (shape, classes and normalisation), or ``None``.
        seed: seeds training, attacks and the defense's randomness. epochs: override of the recipe's epochs.
        steps: PGD iterations of every PGD run (default 40).

    Returns:
        ``{"defense", "options", "model", "dataset", "seed", "eps", "n", "clean_accuracy": {"defended",
        "undefended"}, "robust_accuracy": {"undefended", "naive", "adaptive"}, "attacks": {"undefended",
        "naive", "adaptive"} (each attack's config, its name under "attack"), "warnings": {...} (the
        attacks' own warnings, e.g. vanishing gradients), "seconds"}``; accuracies are fractions in [0, 1].

    Example:
        >>> import advlab
        >>> x, y = advlab.load_dataset("digits", "train")
        >>> out = evaluate_failing("quantize", x[:300], y[:300], x[300:340], y[300:340], eps=0.2, model="softmax",
        ...                        dataset="digits", epochs=2, steps=5)
        >>> sorted(out["robust_accuracy"])
        ['adaptive', 'naive', 'undefended']
    """
    t0 = time.perf_counter()
    spec = defense_spec(name)
    if spec.kind != "failing" or spec.build is None:
        raise ValueError(f"defense {name!r} is a {spec.kind} defense; evaluate_failing takes one of "
                         f"list_defenses('failing')")
    eps = check_float("eps", eps)
    check_int("steps", steps)
    check_optional("epochs", epochs, check_int)
    config = spec.make_config(options)
    defense: FailingDefense = spec.build(config, x_train, y_train, model=model, dataset=dataset, seed=seed,
                                         epochs=epochs)
    runs: dict[str, AttackResult] = {}
    caught: dict[str, list[str]] = {}
    for role, attack in (("undefended", defense.baseline), ("naive", defense.naive), ("adaptive", defense.adaptive)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            runs[role] = attack(x_test, y_test, eps=eps, steps=steps, generator=_seeded(x_test, seed))
        caught[role] = sorted({str(w.message) for w in seen})
    defense.reseed(_seeded(x_test, seed))
    cfg_base = {"attack": runs["undefended"].attack, **runs["undefended"].config}
    return {
        "defense": name, "options": dataclasses.asdict(config) if config is not None else {}, "model": model,
        "dataset": dataset, "seed": seed, "eps": eps, "n": len(x_test),
        "clean_accuracy": {"defended": evaluate_accuracy(defense.defended, x_test, y_test),
                           "undefended": evaluate_accuracy(defense.undefended, x_test, y_test)},
        "robust_accuracy": {role: _robust(r) for role, r in runs.items()},
        "attacks": {"undefended": cfg_base, "naive": runs["naive"].config, "adaptive": runs["adaptive"].config},
        "warnings": caught, "seconds": round(time.perf_counter() - t0, 3),
    }


def _seeded(like: Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


def _robust(result: AttackResult) -> float:
    """Robust accuracy of a one-budget untargeted result, as an exact fraction of the examples."""
    return int((result.clean_correct & ~result.success[0]).sum()) / result.success.shape[1]
