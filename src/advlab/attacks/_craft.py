"""The lean path of an attack for adversarial training: the attack's own kernel, no result object.

:func:`run_attack` validates its inputs, takes the clean logits, re-checks every adversarial example and
builds an :class:`AttackResult`: what an evaluation needs. A training step that crafts adversarial inputs
for every batch needs only the inputs, from the same kernel (one source per attack), at the cost of the
attack's own passes: :func:`craft`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advlab.attacks._context import AttackContext
from advlab.attacks._mode import attack_mode
from advlab.attacks._registry import attack_spec, list_attacks
from advlab.attacks._validation import model_bounds
from advlab.threat import LpBall, check_norm


def craftable() -> list[str]:
    """Names of the attacks :func:`craft` can run (those registered with a kernel factory)."""
    return [name for name in list_attacks() if attack_spec(name).kernel is not None]


def craft_config(name: str, **params: Any) -> Any:
    """The attack's config dataclass built from ``params`` (validated by the config), for :func:`craft`."""
    if name not in craftable():
        raise ValueError(f"attack {name!r} cannot craft training examples; use one of {', '.join(craftable())}")
    spec = attack_spec(name)
    valid = set(spec.defaults())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"attack {name!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(valid)) or '(none)'}")
    return spec.config(**params)


def craft(
    name: str,
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str | None = None,
    config: Any = None,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Adversarial inputs of attack ``name`` for ``(x, y)`` at budget ``eps``, and nothing else.

    The same kernel as ``advlab.attacks.<name>`` runs, in the model's evaluation mode with its parameters
    frozen (both restored after), and its output is projected onto the ball and clipped to ``bounds``. Unlike
    the attack function, nothing is validated beyond the name, norm and config, no clean forward pass is
    added and no success is re-checked: this is for training steps, whose data were validated once.

    Args:
        name: a registered attack in :func:`craftable`.
        model: maps inputs to logits.
        x: inputs ``(N, ...)`` within ``bounds``. y: labels ``(N,)`` (targets when ``targeted``).
        eps: the budget (> 0). norm: the attack's norm, default its first.
        config: the attack's config (see :func:`craft_config`); default its defaults.
        targeted: descend the loss of ``y``. generator: randomness of random starts.
        bounds: the input domain; default the model's (a :class:`~advlab.models.Classifier` records them),
            else ``(0, 1)``.

    Example:
        >>> import torch, advlab
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> x = torch.rand(4, 1, 8, 8)
        >>> x_adv = craft("fgsm", model, x, torch.arange(4), eps=0.1)
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    spec = attack_spec(name)
    if spec.kernel is None:
        raise ValueError(f"attack {name!r} cannot craft training examples; use one of {', '.join(craftable())}")
    norm = check_norm(norm if norm is not None else spec.default_norm, spec.norms)
    if config is None:
        config = spec.config()
    elif not isinstance(config, spec.config):
        raise TypeError(f"attack {name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    kernel = spec.kernel(config, norm)
    x = x.detach()
    ctx = AttackContext(model, bounds if bounds is not None else model_bounds(model), generator, targeted)
    ctx.begin_call(x)
    with attack_mode(model):
        ctx.begin_chunk(x, lambda logits: None, None)
        ctx.labels = y
        found = kernel(ctx, x, y, eps)
    return ctx.clip(x + LpBall(norm, eps).project(found.detach() - x))
