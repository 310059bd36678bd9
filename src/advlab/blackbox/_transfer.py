"""Transfer attacks: craft adversarial examples on a surrogate (or an ensemble of surrogates) with a white-box
attack and evaluate them on target models that were never queried for gradients.

References: Szegedy et al., "Intriguing properties of neural networks", ICLR 2014 (transferability);
Liu, Chen, Liu & Song, "Delving into Transferable Adversarial Examples and Black-box Attacks", ICLR 2017 (the
ensemble of surrogates fused on their softmax outputs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab._provenance import versions
from advlab._validate import check_batch, check_int, check_labels, check_optional
from advlab.attacks import attack_mode, attack_spec
from advlab.attacks._validation import model_bounds, validate_eps
from advlab.blackbox._substitute import _json_safe, check_attack_name

__all__ = ["EnsembleSurrogate", "TransferResult", "predict_labels", "rate_among_correct", "transfer_attack"]

Model = nn.Module | Callable[[Tensor], Tensor]


def _shape_of(model: object) -> tuple[tuple[int, ...] | None, int | None]:
    """``(in_shape, num_classes)`` recorded in a model's ``model_config`` (``None`` where not recorded)."""
    config = getattr(model, "model_config", None)
    if not isinstance(config, dict):
        return None, None
    shape = config.get("in_shape")
    k = config.get("num_classes")
    return (tuple(shape) if isinstance(shape, (list, tuple)) else None), (k if isinstance(k, int) else None)


class EnsembleSurrogate(nn.Module):
    """An ensemble of surrogate models fused on their softmax outputs (Liu et al. 2017).

    ``forward(x) = log(sum_i alpha_i * softmax(z_i(x)))``: the log of the weighted mixture of the members'
    class probabilities, computed stably as ``logsumexp_i(log alpha_i + log_softmax(z_i(x)))``. These are
    log-probabilities, which every advlab attack accepts as logits, so any white-box attack (PGD is the natural
    one) optimises the ensemble's combined loss: cross-entropy on it is ``-log sum_i alpha_i p_i(y | x)``, Liu
    et al.'s objective.

    Members are models taking raw inputs (``Classifier``s; each may normalise differently inside) and must
    share their input bounds (else ``ValueError``); where they record their input shape and class count
    (``model_config``), those must agree too.

    Args:
        models: two or more (one is allowed) modules returning logits ``(N, K)``.
        weights: ``alpha_i >= 0`` (normalised to sum 1), default equal weights.

    Attributes:
        bounds: the members' common input bounds. weights: ``(M,)`` the normalised ``alpha``.

    Example:
        >>> import torch, advlab
        >>> a = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> b = advlab.create_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=(16,))
        >>> ens = EnsembleSurrogate([a, b], weights=[3.0, 1.0])
        >>> x = torch.rand(2, 1, 8, 8)
        >>> mix = 0.75 * torch.softmax(a(x), 1) + 0.25 * torch.softmax(b(x), 1)
        >>> torch.allclose(ens(x).exp(), mix, atol=1e-6)
        True
    """

    weights: Tensor

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, (list, tuple, nn.ModuleList)):
            raise TypeError(f"models must be a list of modules, got {type(models).__name__}")
        members = list(models)
        if not members:
            raise ValueError("an ensemble needs at least one model")
        for i, m in enumerate(members):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{i}] must be a torch.nn.Module returning logits, got {type(m).__name__}")
        bounds = [model_bounds(m) for m in members]
        if len(set(bounds)) > 1:
            listed = ", ".join(f"models[{i}]: {b}" for i, b in enumerate(bounds))
            raise ValueError(f"the surrogates' input bounds differ ({listed}); every member of an ensemble must "
                             f"take inputs in the same range (build them with the same bounds)")
        shapes = [_shape_of(m) for m in members]
        for what, pos in (("input shapes", 0), ("class counts", 1)):
            known = {s[pos] for s in shapes if s[pos] is not None}
            if len(known) > 1:
                listed = ", ".join(f"models[{i}]: {s[pos]}" for i, s in enumerate(shapes) if s[pos] is not None)
                raise ValueError(f"the surrogates' {what} differ ({listed}); an ensemble's members must agree")
        if weights is None:
            w = torch.full((len(members),), 1.0 / len(members), dtype=torch.float64)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().reshape(-1)
            if w.numel() != len(members):
                raise ValueError(f"weights has {w.numel()} values for {len(members)} models; give one per model")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
            w = w / w.sum()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w.float(), persistent=False)
        self.bounds = bounds[0]
        in_shapes = {s[0] for s in shapes if s[0] is not None}
        classes = {s[1] for s in shapes if s[1] is not None}
        self.model_config: dict[str, Any] = {}
        if in_shapes:
            self.model_config["in_shape"] = list(in_shapes.pop())
        if classes:
            self.model_config["num_classes"] = classes.pop()

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(x) for m in self.members]
        if len({tuple(o.shape) for o in outs}) > 1:
            raise ValueError(f"the surrogates return outputs of different shapes "
                             f"{[tuple(o.shape) for o in outs]}; an ensemble's members must share their classes")
        log_p = torch.stack([torch.log_softmax(o, dim=1) for o in outs])  # (M, N, K)
        log_w = self.weights.to(device=log_p.device, dtype=log_p.dtype).log()[:, None, None]
        return torch.logsumexp(log_w + log_p, dim=0)


def predict_labels(model: Model, x: Tensor, batch_size: int | None = None) -> Tensor:
    """Top-1 labels ``(N,)`` of ``model`` on ``x``: the argmax of its scores ``(N, K)``, or its labels ``(N,)``
    when it returns those (a scikit-learn wrapper may); eval mode, no gradients, modes restored after."""
    step = batch_size or max(1, x.shape[0])
    parts = []
    with attack_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], step):
            out = model(x[i : i + step])
            if not isinstance(out, Tensor):
                out = torch.as_tensor(out)
            parts.append((out.argmax(dim=1) if out.ndim == 2 else out).long().to(x.device))
    return torch.cat(parts)


@dataclass
class TransferResult:
    """The record of one transfer attack (:func:`transfer_attack`).

    Attributes:
        attack / eps / norm: the white-box attack run on the surrogate and its budgets.
        surrogate: a name for the surrogate (``"ensemble"`` for several).
        n: examples attacked. white_box_rate: ``(B,)`` the attack's rate on the surrogate itself: among the
            points the surrogate classifies correctly, the fraction misclassified after the attack.
        targets: per target name: ``clean_accuracy``, ``n_correct``, ``transfer_rate`` (per budget: among the
            points the target classifies correctly, the fraction it misclassifies on the transferred examples)
            and ``error_rate`` (per budget: its error on all adversarial examples).
        seconds: wall time. config: every setting.
        x_adv: ``(B, N, ...)`` the adversarial examples (not serialised).
    """

    attack: str
    eps: tuple[float, ...]
    norm: str
    surrogate: str
    n: int
    white_box_rate: list[float]
    targets: dict[str, dict[str, Any]]
    seconds: float
    config: dict[str, Any]
    x_adv: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict of the record (NaN becomes ``None``)."""
        return _json_safe({
            "attack": self.attack, "eps": list(self.eps), "norm": self.norm, "surrogate": self.surrogate, "n": self.n,
            "white_box_rate": self.white_box_rate, "targets": self.targets, "seconds": self.seconds,
            "config": self.config,
        })


def rate_among_correct(clean: Tensor, adv: Tensor, y: Tensor) -> float:
    """Among the points whose clean prediction equals ``y``, the fraction whose adversarial prediction does not
    (``NaN`` when none is correct): the standard transfer (or white-box) rate.

    Example:
        >>> import torch
        >>> rate_among_correct(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 2, 1]))
        0.6666666666666666
    """
    ok = clean == y
    n = int(ok.sum())
    return float((adv[ok] != y[ok]).double().mean()) if n else math.nan


def _as_named(models: Model | Sequence[Model] | Mapping[str, Model], what: str) -> dict[str, Model]:
    if isinstance(models, Mapping):
        named = {str(k): v for k, v in models.items()}
    elif isinstance(models, (list, tuple)):
        named = {f"{what}_{i}": m for i, m in enumerate(models)}
    else:
        named = {what: models}  # type: ignore[dict-item]
    if not named:
        raise ValueError(f"give at least one {what} model")
    for name, m in named.items():
        if not callable(m):
            raise TypeError(f"{what} {name!r} must be a model (a module returning scores), got {type(m).__name__}")
    return named


def transfer_attack(
    surrogate: nn.Module | Sequence[nn.Module],
    targets: Model | Sequence[Model] | Mapping[str, Model],
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "pgd",
    eps: float | Sequence[float] = 0.3,
    norm: str | None = None,
    weights: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    **params: Any,
) -> TransferResult:
    """Crafts adversarial examples on ``surrogate`` with a white-box attack and evaluates them on each target.

    Threat model: white-box access to the surrogate(s), none to the targets (they only classify the finished
    examples); ``eps``/``norm`` bound the perturbation in raw input units. The attacker is given the true
    labels ``y`` (the usual transfer setting: labelled data, no access to the target). A list of surrogates
    is attacked as one :class:`EnsembleSurrogate` (Liu et al. 2017) with ``weights``.

    Rates: ``transfer_rate`` of a target is, among the points it classifies correctly when clean, the fraction
    it misclassifies on the transferred examples; ``white_box_rate`` is the same on the surrogate itself.

    Args:
        surrogate: a module returning logits, or a list of them (an ensemble).
        targets: a model, a list (named ``target_0``, ...) or a mapping name -> model; each returns scores
            ``(N, K)`` or labels ``(N,)``.
        x: ``(N, ...)`` inputs within the surrogate's bounds. y: ``(N,)`` true classes.
        attack: any registered attack (default ``"pgd"``). eps: a budget or several. norm: default the attack's.
        weights: ensemble weights (with a list of surrogates). generator: the attack's randomness.
        batch_size: chunk size of the attack and of the targets' predictions.
        **params: the attack's hyper-parameters (e.g. ``steps=40``).

    Returns:
        A :class:`TransferResult`.

    Example:
        >>> import torch, advlab
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> src = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
        >>> r = transfer_attack(src, {"same": src}, x[:50], y[:50], attack="fgsm", eps=0.2)
        >>> r.targets["same"]["transfer_rate"] == r.white_box_rate
        True
    """
    t0 = time.perf_counter()
    spec = attack_spec(check_attack_name(attack))
    budgets = validate_eps(eps)
    if isinstance(surrogate, (list, tuple)):
        model: nn.Module = EnsembleSurrogate(surrogate, weights=weights)
        name = "ensemble"
    elif isinstance(surrogate, nn.Module):
        if weights is not None:
            raise ValueError("weights apply to a list of surrogates (an ensemble), not to one model")
        model, name = surrogate, getattr(surrogate, "model_name", None) or "surrogate"
    else:
        raise TypeError(f"surrogate must be a module or a list of modules, got {type(surrogate).__name__}")
    named = _as_named(targets, "target")
    x = check_batch(x, model_bounds(model))
    y = check_labels(y, x.shape[0], device=x.device)
    check_optional("batch_size", batch_size, check_int)
    unknown = sorted(set(params) - set(spec.defaults()))
    if unknown:
        raise ValueError(f"attack {attack!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(spec.defaults())) or '(none)'}")
    kwargs = dict(params)
    if norm is not None:
        kwargs["norm"] = norm
    result = spec.fn(model, x, y, eps=list(budgets), generator=generator, batch_size=batch_size, **kwargs)
    white = [rate_among_correct(result.clean_pred, result.adv_pred[i], y) for i in range(len(budgets))]
    out: dict[str, dict[str, Any]] = {}
    for tname, target in named.items():
        clean = predict_labels(target, x, batch_size)
        advs = [predict_labels(target, result.x_adv[i], batch_size) for i in range(len(budgets))]
        out[tname] = {
            "clean_accuracy": float((clean == y).double().mean()), "n_correct": int((clean == y).sum()),
            "transfer_rate": [rate_among_correct(clean, a, y) for a in advs],
            "error_rate": [float((a != y).double().mean()) for a in advs],
        }
    config = {"attack_config": result.config, "weights": None if weights is None else [float(w) for w in weights],
              "members": len(surrogate) if isinstance(surrogate, (list, tuple)) else 1, "versions": versions()}
    return TransferResult(
        attack=attack, eps=budgets, norm=result.norm, surrogate=name, n=x.shape[0], white_box_rate=white,
        targets=out, seconds=time.perf_counter() - t0, config=config, x_adv=result.x_adv.detach(),
    )
