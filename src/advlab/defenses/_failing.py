"""Defenses known to fail, each with the naive attack that reports it robust and the adaptive attack that
breaks it: ``ensemble``, ``weight-decay``, ``dropout``, ``gaussian-noise``, ``denoiser``, ``quantize``, ``jpeg``.

Every entry is registered with kind ``failing`` and a builder of one signature::

    build(config, x_train, y_train, *, model="mlp", dataset=None, seed=0, epochs=None) -> FailingDefense

which trains, on the project's training engine, what the defender deploys (:attr:`FailingDefense.defended`)
and the same classifier without the defense, same seed and recipe (:attr:`FailingDefense.undefended`, the
baseline). :meth:`FailingDefense.naive` runs the attack a careless evaluation runs;
:meth:`FailingDefense.adaptive` the one that breaks the defense: BPDA through non-differentiable transforms,
EOT through test-time randomness, end to end through a denoiser, on the averaged logits of an ensemble
(Athalye, Carlini & Wagner, ICML 2018; Carlini & Wagner, AISec 2017). Whatever model crafts the examples,
they are judged on the defended model itself. :func:`evaluate_failing` runs the three attacks and returns the
numbers.

| name | deployed | naive attack | adaptive attack |
|---|---|---|---|
| ``ensemble`` | mean logits of k models (seeds s, s+1, ...) | PGD on member 0 | PGD on the mean logits |
| ``weight-decay`` | a model trained with strong weight decay | FGSM | PGD with restarts |
| ``dropout`` | dropout kept on at test time | PGD on single draws | PGD through :class:`EOT` |
| ``gaussian-noise`` | noise in training and at test time | PGD on single draws | PGD through :class:`EOT` |
| ``denoiser`` | autoencoder denoiser + classifier | PGD on the classifier | PGD end to end |
| ``quantize`` / ``jpeg`` | transform + classifier | PGD through the transform | PGD with :class:`BPDA` |

What makes each naive attack fail, as measured on the digits MLP (200 test digits, L∞ 0.2, denoiser 0.15,
noise 0.25; robust accuracy undefended / naive / adaptive): through quantisation (3.5 / 89 / 0 %) and JPEG
(3.5 / 90.5 / 5 %) the autograd gradient is exactly zero, PGD does not move, and the attack engine warns
(:class:`~advlab.attacks.RobustnessWarning`). The naive attacks of ``ensemble`` (3.5 / 74 / 9 %), ``dropout``
(3.5 / 60.5 / 8 %), ``gaussian-noise`` (0 / 61 / 3 %) and ``denoiser`` (29.5 / 67.5 / 35.5 %) attack a model
other than the one judged (one member, one random draw, the classifier without its denoiser) and trust its
verdict: each example stops as soon as that model is fooled, barely across its boundary, and mostly not
across the defended model's. Run for all its steps, the same PGD comes much closer to the adaptive attack
(13 %, 9.5 %, 8 % and 48.5 %): strong PGD examples transfer between these models, and the mistake those
evaluations make is trusting the attacked model's verdict. Strong weight decay is no defense that a naive
attack mistakes for one: FGSM already leaves only 17 % (PGD with restarts 9.5 %, undefended 3.5 %).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_float, check_int
from advlab.defenses._failing_core import (
    AttackPlan,
    FailingDefense,
    evaluate_failing,
    noise_step,
    train_classifier,
    train_denoiser,
)
from advlab.defenses._registry import DefenseSpec, register_defense
from advlab.defenses.wrappers import (
    BPDA,
    EOT,
    Defended,
    GaussianNoise,
    JPEGLike,
    LogitEnsemble,
    Quantize,
    RandomDropout,
    bpda,
    model_bounds_of,
)

# Re-exported by :mod:`advlab.defenses` (with the wrappers of :mod:`advlab.defenses.wrappers`).
__all__ = [
    "BPDA",
    "EOT",
    "AttackPlan",
    "Defended",
    "FailingDefense",
    "GaussianNoise",
    "JPEGLike",
    "LogitEnsemble",
    "Quantize",
    "RandomDropout",
    "bpda",
    "evaluate_failing",
]

# The naive PGD of the defenses whose attacked model is not the model judged: it trusts the verdict of the
# model it attacks and stops each example once that verdict says "adversarial".
_STOP = "PGD on {}, each example stopped once that model is fooled"
ATHALYE = "Athalye, Carlini & Wagner, 'Obfuscated Gradients Give a False Sense of Security', ICML 2018"


def _seeded(like: Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


# --------------------------------------------------------------------------------------------------------
# the options


@dataclass(frozen=True)
class EnsembleConfig:
    """Options of ``ensemble``. members: separately trained models (seeds ``seed``, ``seed + 1``, ...)."""

    members: int = 3

    def __post_init__(self) -> None:
        check_int("members", self.members, minimum=2)


@dataclass(frozen=True)
class WeightDecayConfig:
    """Options of ``weight-decay``. weight_decay: of the optimiser (the recipe's default is 0); restarts:
    PGD restarts of the adaptive attack."""

    weight_decay: float = 0.05
    restarts: int = 5

    def __post_init__(self) -> None:
        check_float("weight_decay", self.weight_decay, inclusive=False)
        check_int("restarts", self.restarts)


@dataclass(frozen=True)
class DropoutConfig:
    """Options of ``dropout``. p: dropout probability in training and, kept on, at test time; samples:
    draws averaged by the adaptive attack (EOT)."""

    p: float = 0.3
    samples: int = 32

    def __post_init__(self) -> None:
        check_float("p", self.p, maximum=1.0, inclusive=False, max_inclusive=False)
        check_int("samples", self.samples)


@dataclass(frozen=True)
class GaussianNoiseConfig:
    """Options of ``gaussian-noise``. sigma: standard deviation of the noise added in training and at test
    time (raw input units); samples: draws averaged by the adaptive attack (EOT)."""

    sigma: float = 0.3
    samples: int = 32

    def __post_init__(self) -> None:
        check_float("sigma", self.sigma, inclusive=False)
        check_int("samples", self.samples)


@dataclass(frozen=True)
class DenoiserConfig:
    """Options of ``denoiser``. sigma: noise the denoiser learns to remove; hidden: its bottleneck width;
    epochs: its training epochs."""

    sigma: float = 0.3
    hidden: int = 32
    epochs: int = 40

    def __post_init__(self) -> None:
        check_float("sigma", self.sigma, inclusive=False)
        check_int("hidden", self.hidden)
        check_int("epochs", self.epochs)


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of ``quantize``. levels: values per input coordinate."""

    levels: int = 4

    def __post_init__(self) -> None:
        check_int("levels", self.levels, minimum=2)


@dataclass(frozen=True)
class JPEGConfig:
    """Options of ``jpeg``. quality: JPEG quality, 1-100."""

    quality: int = 50

    def __post_init__(self) -> None:
        check_int("quality", self.quality, minimum=1, maximum=100)


# --------------------------------------------------------------------------------------------------------
# the builders (one signature; see the module docstring)


def _build_ensemble(config: EnsembleConfig, x: Tensor, y: Tensor, *, model: str = "mlp", dataset: str | None = None,
                    seed: int = 0, epochs: int | None = None) -> FailingDefense:
    members = [train_classifier(model, x, y, dataset=dataset, seed=seed + i, epochs=epochs)
               for i in range(config.members)]
    defended = LogitEnsemble(members).eval()
    return FailingDefense(
        "ensemble", config, defended, members[0],
        naive_plan=AttackPlan("pgd", members[0], _STOP.format("member 0 alone"), early_stop=True),
        adaptive_plan=AttackPlan("pgd", defended, "PGD on the ensemble's averaged logits"),
    )


def _build_weight_decay(config: WeightDecayConfig, x: Tensor, y: Tensor, *, model: str = "mlp",
                        dataset: str | None = None, seed: int = 0, epochs: int | None = None) -> FailingDefense:
    defended = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs,
                                recipe_overrides={"weight_decay": config.weight_decay})
    return FailingDefense(
        "weight-decay", config, defended, train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs),
        naive_plan=AttackPlan("fgsm", defended, "FGSM on the model (one step)"),
        adaptive_plan=AttackPlan("pgd", defended, f"PGD with {config.restarts} restarts", config.restarts),
    )


def _random_dropout(classifier: nn.Module, generator: torch.Generator) -> nn.Module:
    """A copy of ``classifier`` whose ``nn.Dropout`` layers stay on at test time (:class:`RandomDropout`)."""
    out = copy.deepcopy(classifier)
    for parent in list(out.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, RandomDropout(child.p, generator))
    return out.eval()


def _build_dropout(config: DropoutConfig, x: Tensor, y: Tensor, *, model: str = "mlp", dataset: str | None = None,
                   seed: int = 0, epochs: int | None = None) -> FailingDefense:
    trained = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs, dropout=config.p)
    gen = _seeded(x, seed)
    defended = _random_dropout(trained, gen)
    return FailingDefense(
        "dropout", config, defended, train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs,
                                                      dropout=0.0),
        naive_plan=AttackPlan("pgd", defended, _STOP.format("single draws of the test-time dropout"),
                               early_stop=True),
        adaptive_plan=AttackPlan("pgd", EOT(defended, config.samples),
                                 f"PGD through EOT over {config.samples} dropout draws"),
        generators=(gen,),
    )


def _build_gaussian_noise(config: GaussianNoiseConfig, x: Tensor, y: Tensor, *, model: str = "mlp",
                          dataset: str | None = None, seed: int = 0, epochs: int | None = None) -> FailingDefense:
    undefended = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs)
    bounds = model_bounds_of(undefended)
    trained = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs,
                               step=noise_step(config.sigma, bounds))
    gen = _seeded(x, seed)
    defended = Defended(GaussianNoise(config.sigma, gen, bounds), trained).eval()
    return FailingDefense(
        "gaussian-noise", config, defended, undefended,
        naive_plan=AttackPlan("pgd", defended, _STOP.format("single draws of the input noise"), early_stop=True),
        adaptive_plan=AttackPlan("pgd", EOT(defended, config.samples),
                                 f"PGD through EOT over {config.samples} noise draws"),
        generators=(gen,),
    )


def _build_denoiser(config: DenoiserConfig, x: Tensor, y: Tensor, *, model: str = "mlp", dataset: str | None = None,
                    seed: int = 0, epochs: int | None = None) -> FailingDefense:
    classifier = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs)
    denoiser = train_denoiser(x, y, sigma=config.sigma, hidden=config.hidden, epochs=config.epochs,
                              bounds=model_bounds_of(classifier), seed=seed)
    defended = Defended(denoiser, classifier).eval()
    return FailingDefense(
        "denoiser", config, defended, classifier,
        naive_plan=AttackPlan("pgd", classifier, _STOP.format("the classifier alone"), early_stop=True),
        adaptive_plan=AttackPlan("pgd", defended, "PGD end to end through denoiser and classifier"),
    )


def _transform_defense(name: str, transform: nn.Module, classifier: nn.Module, config: Any) -> FailingDefense:
    defended = Defended(transform, classifier).eval()
    return FailingDefense(
        name, config, defended, classifier,
        naive_plan=AttackPlan("pgd", defended, f"PGD through the {name} transform (autograd gradient)"),
        adaptive_plan=AttackPlan("pgd", bpda(defended), "PGD with BPDA (straight-through gradient)"),
    )


def _build_quantize(config: QuantizeConfig, x: Tensor, y: Tensor, *, model: str = "mlp", dataset: str | None = None,
                    seed: int = 0, epochs: int | None = None) -> FailingDefense:
    classifier = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs)
    return _transform_defense("quantize", Quantize(config.levels, model_bounds_of(classifier)), classifier, config)


def _build_jpeg(config: JPEGConfig, x: Tensor, y: Tensor, *, model: str = "mlp", dataset: str | None = None,
                seed: int = 0, epochs: int | None = None) -> FailingDefense:
    classifier = train_classifier(model, x, y, dataset=dataset, seed=seed, epochs=epochs)
    return _transform_defense("jpeg", JPEGLike(config.quality, model_bounds_of(classifier)), classifier, config)


for _spec in (
    DefenseSpec("ensemble", "failing", "Logit-averaging ensemble of separately trained models.",
                "Tramèr et al., ICLR 2018; He, Wei, Chen, Carlini & Song, WOOT 2017", EnsembleConfig, _build_ensemble),
    DefenseSpec("weight-decay", "failing", "Strong weight decay, claimed to smooth the model.",
                "Goodfellow, Shlens & Szegedy, ICLR 2015", WeightDecayConfig, _build_weight_decay),
    DefenseSpec("dropout", "failing", "Dropout kept on at test time as randomisation.",
                f"{ATHALYE} (EOT: Athalye, Engstrom, Ilyas & Kwok, ICML 2018)", DropoutConfig, _build_dropout),
    DefenseSpec("gaussian-noise", "failing", "Gaussian noise on the inputs in training and at test time.",
                f"{ATHALYE} (EOT: Athalye, Engstrom, Ilyas & Kwok, ICML 2018)", GaussianNoiseConfig,
                _build_gaussian_noise),
    DefenseSpec("denoiser", "failing", "An autoencoder trained to remove noise, in front of the classifier.",
                "Gu & Rigazio, ICLR 2015 workshop; Carlini & Wagner, AISec 2017", DenoiserConfig, _build_denoiser),
    DefenseSpec("quantize", "failing", "Input quantisation to a few levels (non-differentiable).",
                f"Xu, Evans & Qi, NDSS 2018; {ATHALYE}", QuantizeConfig, _build_quantize),
    DefenseSpec("jpeg", "failing", "JPEG-like compression of the inputs (non-differentiable).",
                f"Dziugaite et al. 2016; Guo et al., ICLR 2018; {ATHALYE}", JPEGConfig, _build_jpeg),
):
    register_defense(_spec)
