"""Adversarial training as a regulariser of the output distribution: ``trades`` and ``vat``.

Both maximise a KL divergence between the model's prediction at ``x`` and at a nearby point, which no
registered attack's loss is, so their inner maximisations are written here (on :class:`advlab.threat.LpBall`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_float, check_int, check_optional
from advlab.attacks import attack_mode
from advlab.defenses._registry import DefenseSpec, register_defense
from advlab.defenses._transforms import model_bounds_of
from advlab.threat import LpBall
from advlab.train.steps import StepContext, StepFn, StepOutput


def _kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """Per-example ``KL(softmax(clean) || softmax(logits))``, ``(N,)``."""
    p_log = F.log_softmax(clean_logits, dim=1)
    return (p_log.exp() * (p_log - F.log_softmax(logits, dim=1))).sum(dim=1)


# --------------------------------------------------------------------------------------------------------
# trades


@dataclass(frozen=True)
class TRADESConfig:
    """Options of ``trades``.

    Attributes:
        beta: weight of the robustness term, ``CE(f(x), y) + beta * KL(f(x) || f(x'))``: larger trades clean
            accuracy for robust accuracy (the paper: 1 to 6 on MNIST/CIFAR-10, 6 by default).
        steps: iterations of the inner maximisation of the KL term.
        step_size: its step, raw units; ``None`` is ``2.5 * eps / steps``.
    """

    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        check_float("beta", self.beta)
        check_int("steps", self.steps)
        check_optional("step_size", self.step_size, check_float, inclusive=False)


def _trades(config: TRADESConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    ball = LpBall(norm, eps)
    alpha = config.step_size if config.step_size is not None else 2.5 * eps / config.steps

    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        module = ctx.module if ctx.module is not None else model
        lo, hi = model_bounds_of(module)
        with attack_mode(module):  # evaluation mode, frozen parameters, both restored after
            with torch.no_grad():
                clean = module(x)
            # Start next to x (a tiny Gaussian step, as the paper): at x itself the KL gradient is zero.
            noise = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
            x_adv = (x + 0.001 * noise).clamp(lo, hi)
            for _ in range(config.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    grad = torch.autograd.grad(_kl(clean, module(x_adv)).sum(), x_adv)[0]
                moved = x_adv.detach() + ball.steepest_step(grad, alpha, x=x_adv.detach(), bounds=(lo, hi))
                x_adv = (x + ball.project(moved - x)).clamp(lo, hi).detach()
        logits = model(torch.cat([x, x_adv]))
        natural, adv = logits[: x.shape[0]], logits[x.shape[0] :]
        robust = _kl(natural, adv).mean()
        loss = F.cross_entropy(natural, y) + config.beta * robust
        metrics = {"adv_accuracy": float((adv.detach().argmax(dim=1) == y).float().mean()),
                   "kl": float(robust.detach())}
        return StepOutput(loss, logits=natural, metrics=metrics)

    return step


register_defense(DefenseSpec(
    name="trades", kind="training", config=TRADESConfig, build=_trades, norms=("linf", "l2"),
    summary="TRADES: clean cross-entropy plus beta times the KL between the predictions at x and at the point "
            "of the ball maximising it.",
    reference="Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, ICML 2019",
    recipes={"cnn-small/mnist": {"epochs": 5, "lr": 5e-3, "schedule": "onecycle", "batch_size": 128}},
    model_options={"cnn-small": {"dropout": 0.0, "conv_dropout": 0.0}},
))


# --------------------------------------------------------------------------------------------------------
# vat


@dataclass(frozen=True)
class VATConfig:
    """Options of ``vat`` (``eps`` is the L2 radius of the virtual adversarial perturbation).

    Attributes:
        xi: length of the finite-difference probe of the power iteration.
        power_iterations: power iterations for the most sensitive direction (1 suffices, the paper).
        weight: weight of the local distributional smoothness term against the labelled cross-entropy.
    """

    xi: float = 1e-6
    power_iterations: int = 1
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_float("xi", self.xi, inclusive=False)
        check_int("power_iterations", self.power_iterations)
        check_float("weight", self.weight)


def _unit(d: Tensor) -> Tensor:
    flat = d.reshape(d.shape[0], -1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(d)


def _vat(config: VATConfig, *, eps: float, norm: str, static: Sequence[nn.Module] = ()) -> StepFn:
    def step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        module = ctx.module if ctx.module is not None else model
        lo, hi = model_bounds_of(module)
        with attack_mode(module):  # evaluation mode, frozen parameters, both restored after
            with torch.no_grad():
                clean = module(x)
            d = _unit(torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype))
            for _ in range(config.power_iterations):
                probe = (config.xi * d).requires_grad_(True)
                with torch.enable_grad():
                    grad = torch.autograd.grad(_kl(clean, module(x + probe)).sum(), probe)[0]
                d = _unit(grad)
        x_vadv = (x + eps * d).clamp(lo, hi)
        logits = model(torch.cat([x, x_vadv]))
        natural, vadv = logits[: x.shape[0]], logits[x.shape[0] :]
        labelled = y >= 0
        ce = F.cross_entropy(natural[labelled], y[labelled]) if bool(labelled.any()) else natural.sum() * 0.0
        lds = _kl(clean, vadv).mean()  # the clean prediction is a constant target, as in the paper
        return StepOutput(ce + config.weight * lds, logits=natural,
                          metrics={"lds": float(lds.detach()), "labelled_fraction": float(labelled.float().mean())})

    step.accepts_unlabelled = True  # type: ignore[attr-defined]
    return step


register_defense(DefenseSpec(
    name="vat", kind="training", config=VATConfig, build=_vat, norms=("l2",), semi_supervised=True,
    summary="Virtual adversarial training: cross-entropy on the labelled examples plus the KL smoothness term "
            "at the virtual adversarial direction, on labelled and unlabelled examples alike (labelled=N).",
    reference="Miyato, Maeda, Koyama & Ishii, TPAMI 2018 (and ICLR 2016)",
))
