"""Training the detector of adversarial inputs (Metzen et al. 2017) on a frozen classifier, and its registry
entry (the ``detector`` defense)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_batch, check_float, check_labels
from advlab.attacks import attack_spec, craft, craft_config, craftable
from advlab.attacks._validation import model_bounds
from advlab.defenses._detector import Detector, DetectorConfig, default_layer, head_for, layers
from advlab.defenses._registry import DefenseSpec, register_defense
from advlab.models import reset_parameters
from advlab.models.classifier import Classifier, unchecked_inputs
from advlab.train.steps import StepContext, StepOutput

__all__ = ["train_detector"]


Crafter = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def _crafter(name: str, classifier: nn.Module, eps: float, norm: str, options: dict[str, Any]) -> Crafter:
    """Adversarial inputs of one attack on the classifier: the lean path where the attack has a kernel,
    else the attack function."""
    if name in craftable():
        config = craft_config(name, **options)

        def lean(x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
            return craft(name, classifier, x, y, eps=eps, norm=norm, config=config, generator=gen)

        return lean
    spec = attack_spec(name)
    unknown = sorted(set(options) - set(spec.defaults()))
    if unknown:
        raise ValueError(f"attack {name!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(spec.defaults()))}")

    def full(x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        return spec.fn(classifier, x, y, eps=eps, norm=norm, generator=gen, **options).x_adv[0]

    return full


def train_detector(
    classifier: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    norm: str = "linf",
    layer: int | None = None,
    width: int = 32,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    steps: int = 10,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    generator: torch.Generator | None = None,
) -> Detector:
    """Trains a detector of adversarial inputs on a layer of a frozen classifier (Metzen et al. 2017).

    Threat model: the attacks' L_p ball of radius ``eps`` (``norm``) within the classifier's bounds. Every
    step of :func:`advlab.train.fit` takes a batch of clean inputs, splits it among ``attacks`` (each
    example gets one, in turn after the epoch's shuffle), crafts the adversarial inputs *fresh for this
    batch* on the classifier (so random starts differ every epoch) and minimises the binary cross-entropy of
    the detection logits of the clean (label 0) and adversarial (label 1) halves: balanced, one to one.
    Only the head learns: the classifier's weights and ``.grad`` never change; it is put in evaluation mode
    and the detector keeps it there. The activation is standardised per channel (per feature when flat)
    with its mean and standard deviation on the clean inputs.

    Args:
        classifier: logits for raw inputs; an ``advlab.models.Classifier`` around an ``nn.Sequential`` (the
            zoo's models but ``resnet-tiny``) or an ``nn.Sequential``.
        x: clean training inputs ``(N, C, H, W)`` within the classifier's bounds. y: their labels ``(N,)``.
        eps: the attacks' budget (> 0, raw input units).
        attacks: registered attacks (``advlab.list_attacks()``) supporting ``norm``, default FGSM and PGD;
            those with a kernel run on the lean path :func:`advlab.attacks.craft`, the others as functions.
        norm: ``linf`` (default), ``l2`` or ``l1``.
        layer: the index in the classifier's ``nn.Sequential`` whose output is read; default
            :func:`default_layer` (``cnn-small``: 2, the first conv block).
        width: the head's channels or hidden units (default 32). epochs: default 10. batch_size: clean
            inputs per step (default 64). lr: Adam's learning rate (default 1e-3).
        steps: iterations of the attacks with a ``steps`` option (default 10).
        attack_options: per attack, options overriding the defaults, e.g. ``{"pgd": {"steps": 20}}``.
        generator: the head's initialisation, the shuffling and the attacks' random starts; ``None`` takes
            a seed from PyTorch's global RNG.

    Returns:
        A :class:`Detector` in evaluation mode (threshold 0) whose ``record`` holds these settings.

    Raises:
        ValueError / TypeError: an unknown attack or one without ``norm`` (the valid ones are listed),
        ``eps <= 0``, a layer index out of range, inputs outside the bounds, labels of the wrong shape.

    Example:
        >>> import torch, advlab
        >>> clf = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10).eval()
        >>> det = train_detector(clf, torch.rand(16, 1, 8, 8), torch.arange(16) % 10, eps=0.1, epochs=1,
        ...                      generator=torch.Generator().manual_seed(0))
        >>> det(torch.rand(3, 1, 8, 8)).shape, det.record["attacks"]
        (torch.Size([3]), ['fgsm', 'pgd'])
    """
    from advlab.train import fit  # lazy: the engine imports models and data

    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    eps = check_float("eps", eps, inclusive=False)
    config = DetectorConfig(attacks=tuple(attacks) if not isinstance(attacks, str) else (attacks,), norm=norm,
                            layer=layer, width=width, epochs=epochs, batch_size=batch_size, lr=lr, steps=steps)
    net = layers(classifier)
    if layer is not None and layer >= len(net):
        raise ValueError(f"layer {layer} is out of range: the classifier's nn.Sequential has {len(net)} layers; "
                         f"pass an index in 0..{len(net) - 1}")
    at = default_layer(classifier) if layer is None else layer
    x = check_batch(x, model_bounds(classifier))
    y = check_labels(y, len(x), device=x.device)
    options = _attack_options(config, attack_options)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    crafters = [_crafter(name, classifier, eps, config.norm, options[name]) for name in config.attacks]

    classifier.eval()
    checked = isinstance(classifier, Classifier) and classifier.check_inputs
    with torch.no_grad(), unchecked_inputs(classifier) if checked else nullcontext():
        classes = classifier(x[:1]).shape[1]
        if int(y.max()) >= classes or int(y.min()) < 0:
            raise ValueError(f"labels must be class indices in [0, {classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        probe = Detector(classifier, at, nn.Identity(), torch.zeros(()), torch.ones(()))
        acts = torch.cat([probe.activation(x[i : i + 512]) for i in range(0, len(x), 512)])
    dims = [0, 2, 3] if acts.dim() == 4 else [0]
    mean = acts.mean(dim=dims, keepdim=True)
    std = acts.std(dim=dims, keepdim=True).clamp_min(1e-6) if len(acts) > 1 else torch.ones_like(mean)
    with torch.random.fork_rng(devices=[]):  # the throw-away default init must not move the global RNG
        head = head_for(acts.shape[1:], config.width)
    reset_parameters(head, torch.Generator().manual_seed(seed))
    det = Detector(classifier, at, head.to(acts.device), mean, std)

    def step(model: nn.Module, xb: Tensor, yb: Tensor, ctx: StepContext) -> StepOutput:
        n = len(xb)
        share = torch.arange(n, device=xb.device) % len(crafters)
        adv = xb.clone()
        for i, run in enumerate(crafters):
            rows = (share == i).nonzero().squeeze(1)
            if rows.numel():
                adv[rows] = run(xb[rows], yb[rows], ctx.generator)
        with torch.no_grad():
            acts = det.activation(torch.cat([xb, adv]))
        scores = det.score(acts)
        target = torch.cat([torch.zeros(n), torch.ones(n)]).to(scores)
        loss = F.binary_cross_entropy_with_logits(scores, target)
        accuracy = ((scores > 0) == (target > 0.5)).float().mean()
        return StepOutput(loss=loss, metrics={"detection_accuracy": float(accuracy)})

    optimizer = torch.optim.Adam(det.head.parameters(), lr=config.lr)
    with unchecked_inputs(classifier) if checked else nullcontext():
        history = fit(det, x, y, epochs=config.epochs, batch_size=config.batch_size, optimizer=optimizer,
                      step=step, seed=seed)
    det.eval()
    last = history.epochs[-1]
    det.record = {
        **dataclasses.asdict(config), "attacks": list(config.attacks), "layer": at, "eps": eps,
        "attack_options": options, "activation_shape": list(acts.shape[1:]), "n_train": len(x), "seed": seed,
        "loss": last.loss, "detection_accuracy": last.metrics.get("detection_accuracy"),
        "seconds": history.seconds, "crafting": "fresh per batch",
    }
    return det


def _attack_options(config: DetectorConfig, given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    """Per attack, its options: ``steps`` where the attack has one, then the caller's overrides."""
    given = dict(given or {})
    stray = sorted(set(given) - set(config.attacks))
    if stray:
        raise ValueError(f"attack_options name attack(s) not trained on: {', '.join(stray)}; "
                         f"attacks: {', '.join(config.attacks)}")
    out: dict[str, dict] = {}
    for name in config.attacks:
        opts: dict[str, Any] = {"steps": config.steps} if "steps" in attack_spec(name).defaults() else {}
        extra = given.get(name, {})
        if not isinstance(extra, Mapping):
            raise TypeError(f"attack_options[{name!r}] must be a mapping of option values, got "
                            f"{type(extra).__name__}")
        out[name] = {**opts, **extra}
    return out


def _build(config: DetectorConfig, classifier: nn.Module, x: Tensor, y: Tensor, *, eps: float,
           generator: torch.Generator | None = None, **kwargs: Any) -> Detector:
    """The registry's builder: :func:`train_detector` with the options of ``config``."""
    return train_detector(classifier, x, y, eps=eps, generator=generator, **dataclasses.asdict(config), **kwargs)


register_defense(DefenseSpec(
    name="detector",
    kind="detector",
    summary="A subnetwork on an inner layer of a frozen classifier that flags adversarial inputs.",
    reference='Metzen, Genewein, Fischer & Bischoff, "On Detecting Adversarial Perturbations", ICLR 2017',
    config=DetectorConfig,
    build=_build,
    norms=("linf", "l2", "l1"),
))
