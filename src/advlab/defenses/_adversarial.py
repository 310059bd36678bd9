"""Adversarial training by crafting each batch's examples with a registered attack: ``fgsm-at``, ``rfgsm-at``,
``ensemble-at``, ``pgd-at``, ``fast-at`` and ``free-at``.

Each is a step function of the one training engine (:func:`advlab.train.fit`); the examples are crafted with
:func:`advlab.attacks.craft`, the attack's own kernel, on the model in evaluation mode (dropout off), and the
loss is taken in training mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_bool, check_choice, check_float, check_int, check_optional
from advlab.attacks import PGDConfig, RFGSMConfig, craft
from advlab.defenses._registry import DefenseSpec, register_defense
from advlab.defenses._transforms import model_bounds_of
from advlab.train.steps import StepContext, StepFn, StepOutput

LABELS = ("predicted", "true")


def _craft_labels(module: nn.Module, x: Tensor, y: Tensor, labels: str) -> Tensor:
    """The labels the examples are crafted against: ``y``, or the model's own predictions (no label leaking)."""
    if labels == "true":
        return y
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(x).argmax(dim=1)
    finally:
        module.train(was)


def _mixed(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, alpha: float) -> StepOutput:
    """``alpha * CE(x) + (1 - alpha) * CE(x_adv)`` in one forward pass; the clean logits for the accuracy
    (the adversarial ones when ``alpha`` is 0)."""
    if alpha == 0.0:
        adv = model(x_adv)
        return StepOutput(F.cross_entropy(adv, y), logits=adv, metrics=_adv_metrics(adv, y))
    logits = model(torch.cat([x, x_adv]))
    clean, adv = logits[: x.shape[0]], logits[x.shape[0] :]
    loss = alpha * F.cross_entropy(clean, y) + (1.0 - alpha) * F.cross_entropy(adv, y)
    return StepOutput(loss, logits=clean, metrics=_adv_metrics(adv, y))


def _adv_metrics(adv_logits: Tensor, y: Tensor) -> dict[str, float]:
    return {"adv_accuracy": float((adv_logits.detach().argmax(dim=1) == y).float().mean())}


def _module(model: nn.Module, ctx: StepContext) -> nn.Module:
    return ctx.module if ctx.module is not None else model


# --------------------------------------------------------------------------------------------------------
# fgsm-at


@dataclass(frozen=True)
class FGSMATConfig:
    """Options of ``fgsm-at``.

    Attributes:
        alpha: weight of the clean loss, ``alpha * L(x, y) + (1 - alpha) * L(x_adv, y)`` (Goodfellow et al.: 0.5).
        labels: the labels the FGSM examples are crafted with: ``predicted`` (the model's own predictions,
            Kurakin et al.'s fix for label leaking, default) or ``true``.
    """

    alpha: float = 0.5
    labels: str = "predicted"

    def __post_init__(self) -> None:
        check_float("alpha", self.alpha, maximum=1.0)
        check_choice("labels", self.labels, LABELS)


def _fgsm_at(config: FGSMATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        module = _module(model, ctx)
        x_adv = craft("fgsm", module, x, _craft_labels(module, x, y, config.labels), eps=eps)
        return _mixed(model, x, x_adv, y, config.alpha)

    return step


register_defense(DefenseSpec(
    name="fgsm-at", kind="training", config=FGSMATConfig, build=_fgsm_at,
    summary="Adversarial training on FGSM examples, alpha-weighted with the clean loss; label-leak-safe labels.",
    reference="Goodfellow, Shlens & Szegedy, ICLR 2015; labels: Kurakin, Goodfellow & Bengio, ICLR 2017",
    recipes={"maxout": {"epochs": 20}, "mlp": {"epochs": 10}},
))


# --------------------------------------------------------------------------------------------------------
# rfgsm-at and ensemble-at


@dataclass(frozen=True)
class RFGSMATConfig:
    """Options of ``rfgsm-at``.

    Attributes:
        alpha: weight of the clean loss (0.5: half clean, half adversarial, as Tramèr et al.).
        random_step: length of the random sign step, raw units; ``None`` is ``eps / 2``.
        labels: ``predicted`` (default) or ``true`` labels for crafting.
    """

    alpha: float = 0.5
    random_step: float | None = None
    labels: str = "predicted"

    def __post_init__(self) -> None:
        check_float("alpha", self.alpha, maximum=1.0)
        check_optional("random_step", self.random_step, check_float)
        check_choice("labels", self.labels, LABELS)


def _rfgsm_at(config: RFGSMATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    if config.random_step is not None and config.random_step > eps:
        raise ValueError(f"random_step {config.random_step} exceeds eps {eps}; use a random step <= eps")
    attack = RFGSMConfig(random_step=config.random_step)

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        module = _module(model, ctx)
        target = _craft_labels(module, x, y, config.labels)
        x_adv = craft("rfgsm", module, x, target, eps=eps, config=attack, generator=ctx.generator)
        return _mixed(model, x, x_adv, y, config.alpha)

    return step


register_defense(DefenseSpec(
    name="rfgsm-at", kind="training", config=RFGSMATConfig, build=_rfgsm_at,
    summary="Adversarial training on RAND+FGSM examples (a random sign step, then FGSM), half clean.",
    reference="Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, ICLR 2018",
))


ENSEMBLE_ATTACKS = ("fgsm", "rfgsm")


@dataclass(frozen=True)
class EnsembleATConfig:
    """Options of ``ensemble-at``.

    Attributes:
        alpha: weight of the clean loss (0.5).
        attack: ``fgsm`` (default) or ``rfgsm``, run on the batch's source model.
        labels: ``predicted`` (default; each source's own prediction) or ``true`` labels for crafting.
    """

    alpha: float = 0.5
    attack: str = "fgsm"
    labels: str = "predicted"

    def __post_init__(self) -> None:
        check_float("alpha", self.alpha, maximum=1.0)
        check_choice("attack", self.attack, ENSEMBLE_ATTACKS)
        check_choice("labels", self.labels, LABELS)


def _ensemble_at(config: EnsembleATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    if not static:
        raise ValueError("ensemble-at needs static models: pass static=[...] (advlab train --static DIR, "
                         "repeated) with separately trained checkpoints")
    for m in static:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        # Rotation: batch b takes its examples from source b mod (1 + #static); source 0 is the model itself.
        k = ctx.step % (1 + len(static))
        source = _module(model, ctx) if k == 0 else static[k - 1]
        target = _craft_labels(source, x, y, config.labels)
        x_adv = craft(config.attack, source, x, target, eps=eps, generator=ctx.generator)
        out = _mixed(model, x, x_adv, y, config.alpha)
        out.metrics["source_static"] = float(k != 0)
        return out

    return step


register_defense(DefenseSpec(
    name="ensemble-at", kind="training", config=EnsembleATConfig, build=_ensemble_at, uses_static=True,
    summary="Ensemble adversarial training: each batch's examples come in rotation from the model and from "
            "static, separately trained models, crafted fresh per batch.",
    reference="Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, ICLR 2018",
))


# --------------------------------------------------------------------------------------------------------
# pgd-at and fast-at


@dataclass(frozen=True)
class PGDATConfig:
    """Options of ``pgd-at`` (Madry et al.'s min-max training).

    Attributes:
        steps: PGD iterations of the inner maximisation.
        step_size: PGD step, raw units; ``None`` is ``2.5 * eps / steps``.
        random_start: start each example at a random point of the ball.
    """

    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_optional("step_size", self.step_size, check_float, inclusive=False)
        check_bool("random_start", self.random_start)


def _pgd_at(config: PGDATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    attack = PGDConfig(steps=config.steps, step_size=config.step_size, random_start=config.random_start)

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        x_adv = craft("pgd", _module(model, ctx), x, y, eps=eps, norm=norm, config=attack, generator=ctx.generator)
        logits = model(x_adv)
        return StepOutput(F.cross_entropy(logits, y), logits=logits, metrics=_adv_metrics(logits, y))

    return step


register_defense(DefenseSpec(
    name="pgd-at", kind="training", config=PGDATConfig, build=_pgd_at, norms=("linf", "l2"),
    summary="Min-max adversarial training: the loss at PGD examples (random start) only; the train accuracy "
            "is on them.",
    reference="Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018",
    recipes={"cnn-small/mnist": {"epochs": 5, "lr": 5e-3, "schedule": "onecycle", "batch_size": 128}},
    model_options={"cnn-small": {"dropout": 0.0, "conv_dropout": 0.0}},
))


@dataclass(frozen=True)
class FastATConfig:
    """Options of ``fast-at`` (FGSM from a random start, Wong, Rice & Kolter 2020).

    Attributes:
        step_size: the FGSM step from the random start, raw units; ``None`` is ``1.25 * eps`` (the paper's
            choice; 0.375 at eps 0.3 on MNIST).
    """

    step_size: float | None = None

    def __post_init__(self) -> None:
        check_optional("step_size", self.step_size, check_float, inclusive=False)


def _fast_at(config: FastATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    alpha = config.step_size if config.step_size is not None else 1.25 * eps
    attack = PGDConfig(steps=1, step_size=alpha, random_start=True)

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        x_adv = craft("pgd", _module(model, ctx), x, y, eps=eps, config=attack, generator=ctx.generator)
        logits = model(x_adv)
        return StepOutput(F.cross_entropy(logits, y), logits=logits, metrics=_adv_metrics(logits, y))

    return step


register_defense(DefenseSpec(
    name="fast-at", kind="training", config=FastATConfig, build=_fast_at, checks_overfitting=True,
    summary="Fast adversarial training: FGSM from a uniform random start, cyclic learning rate, a PGD check "
            "for catastrophic overfitting every epoch (restores the best epoch).",
    reference="Wong, Rice & Kolter, 'Fast is better than free', ICLR 2020",
    recipes={"cnn-small/mnist": {"epochs": 12, "lr": 5e-3, "schedule": "onecycle", "batch_size": 128},
             "": {"schedule": "onecycle"}},
    model_options={"cnn-small": {"dropout": 0.0, "conv_dropout": 0.0}},
))


# --------------------------------------------------------------------------------------------------------
# free-at


@dataclass(frozen=True)
class FreeATConfig:
    """Options of ``free-at`` ("free" adversarial training, Shafahi et al. 2019).

    Attributes:
        replays: times each minibatch is replayed; every replay updates the weights and the perturbation
            from one backward pass. Divide the epochs by it to keep the cost of standard training.
    """

    replays: int = 8

    def __post_init__(self) -> None:
        check_int("replays", self.replays)


def _free_at(config: FreeATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    state: dict[str, Tensor] = {}

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        # The perturbation carries over from the previous minibatch (rows beyond its size start at 0).
        delta = torch.zeros_like(x)
        prev = state.get("delta")
        if prev is not None and prev.shape[1:] == x.shape[1:]:
            rows = min(prev.shape[0], x.shape[0])
            delta[:rows] = prev[:rows]
        lo, hi = model_bounds_of(_module(model, ctx))
        opt = ctx.optimizer
        loss = logits = torch.zeros(())
        for _ in range(config.replays):
            x_adv = (x + delta).clamp_(lo, hi).requires_grad_(True)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # one backward: the weights' and the input's gradients
            opt.step()
            grad = x_adv.grad
            assert grad is not None
            delta = (delta + eps * grad.sign()).clamp_(-eps, eps)
        state["delta"] = delta.detach()
        logits = logits.detach()
        return StepOutput(loss.detach(), logits=logits, metrics=_adv_metrics(logits, y), applied=True)

    return step


register_defense(DefenseSpec(
    name="free-at", kind="training", config=FreeATConfig, build=_free_at,
    summary="'Free' adversarial training: each minibatch replayed, the weights and the perturbation updated "
            "from the same backward pass.",
    reference="Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor & Goldstein, NeurIPS 2019",
    recipes={"cnn-small/mnist": {"epochs": 2, "lr": 1e-3, "schedule": "cosine"}, "": {"schedule": "cosine"}},
))
