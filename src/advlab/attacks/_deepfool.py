"""DeepFool: the minimal perturbation to the nearest (linearised) decision boundary.

Reference: Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advlab._validate import check_float, check_int
from advlab.attacks._context import AttackContext, Kernel
from advlab.attacks._engine import run_attack
from advlab.attacks._registry import register_attack
from advlab.attacks._result import AttackResult

_TINY = 1e-12
_PUSH = 1e-4


@dataclass(frozen=True)
class DeepFoolConfig:
    """Hyper-parameters of DeepFool: iterations, classes linearised per step and the final overshoot."""

    steps: int = 50
    candidates: int = 10
    overshoot: float = 0.02

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_int("candidates", self.candidates, minimum=2)
        check_float("overshoot", self.overshoot)


def _deepfool_kernel(config: DeepFoolConfig, norm: str) -> Kernel:
    def kernel(ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        scale = 1.0 + config.overshoot
        x_adv = x.clone()
        r_tot = torch.zeros_like(x)
        active = torch.arange(x.shape[0], device=x.device)
        rivals: Tensor | None = None  # (N, k) competing classes, fixed from the clean logits
        for _ in range(config.steps):
            xa = x_adv[active].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = ctx.forward(xa)
                if rivals is None:
                    k = min(config.candidates, logits.shape[1]) - 1  # competing classes besides the true one
                    rivals = logits.detach().scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
                keep = logits.detach().argmax(dim=1) == y[active]  # early exit once misclassified
                if not bool(keep.any()):
                    break
                active, logits = active[keep], logits[keep]
                diffs = logits.gather(1, rivals[active]) - logits.gather(1, y[active, None])  # (n, k), < 0
                grads = [ctx.grad(diffs[:, j], xa, retain_graph=j < k - 1)[keep] for j in range(k)]
            n = active.shape[0]
            w = torch.stack(grads, dim=1).reshape(n, k, -1)  # (n, k, d) gradients of f_j - f_y
            dual = w.abs().sum(dim=2) if norm == "linf" else w.norm(dim=2)
            # Distance to each linearised boundary, pushed _PUSH further so that a step cut short by the
            # bounds still makes progress (as in the authors' reference code).
            dist = (diffs.detach().abs() + _PUSH) / dual.clamp(min=_TINY)
            best = dist.argmin(dim=1, keepdim=True)
            w_best = w.gather(1, best[:, :, None].expand(n, 1, w.shape[2])).squeeze(1)  # (n, d)
            if norm == "linf":
                step = dist.gather(1, best) * w_best.sign()
            else:
                step = dist.gather(1, best) * w_best / dual.gather(1, best).clamp(min=_TINY)
            x0 = x[active]
            new = ctx.clip(x0 + scale * (r_tot[active] + step.reshape(x0.shape)))
            r_tot[active] = (new - x0) / scale
            x_adv[active] = new
        return x_adv

    return kernel


@register_attack("deepfool", norms=("l2", "linf"), config=DeepFoolConfig, targeted=False, min_norm=True)
def deepfool(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Sequence[float],
    norm: str = "l2",
    steps: int = 50,
    candidates: int = 10,
    overshoot: float = 0.02,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    true_labels: Tensor | None = None,
) -> AttackResult:
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016): walks to the nearest linearised decision boundary.

    A minimum-norm attack, untargeted only. Each step linearises the logit differences ``f_j - f_y`` of the
    ``candidates - 1`` most likely rival classes around the current point and moves onto the nearest
    linearised boundary: by ``|f_j| / ||w_j||_2`` along ``w_j`` (L2) or ``|f_j| / ||w_j||_1`` along
    ``sign(w_j)`` (L∞), plus ``1e-4 / ||w_j||`` so that a step cut short by the bounds still makes progress.
    The point reported is ``x + (1 + overshoot) * r_total``, clipped to the bounds. An example stops as soon
    as it is misclassified. Cost per step and active example: one forward and ``candidates - 1`` backward passes.

    Threat model: the attack runs once, without a budget; every budget in ``eps`` is then filled by
    projecting the perturbation onto its L_p ball (``norm`` in ``l2``, ``linf``) and re-checking success.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` inputs. y: ``(N,)`` true classes.
        eps: budget or list of budgets (raw input units). norm: ``l2`` (default) or ``linf``.
        steps: maximum iterations, default 50. candidates: classes linearised per step, the true class
            included, default 10 (capped at the number of classes). overshoot: relative overshoot past the
            boundary, default 0.02. targeted: must be ``False``. generator: unused (deterministic).
        batch_size: chunk size. true_labels: unused (untargeted only).

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> r = advlab.attacks.deepfool(model, torch.rand(4, 1, 8, 8), torch.arange(4), eps=[1.0, 5.0])
        >>> r.success.shape
        torch.Size([2, 4])
    """
    if targeted:
        raise ValueError("deepfool is untargeted only; use targeted=False, or a targeted attack such as cw or apgd")
    config = DeepFoolConfig(steps=steps, candidates=candidates, overshoot=overshoot)
    return run_attack(
        "deepfool", model, x, y, eps=eps, norm=norm, kernel=_deepfool_kernel(config, norm), config=config,
        targeted=False, generator=generator, batch_size=batch_size, true_labels=true_labels, clean_first=True,
    )
