"""Transfer matrices: craft on every source model, evaluate on every target model.

Reference: Papernot, McDaniel & Goodfellow, "Transferability in Machine Learning: from Phenomena to Black-Box
Attacks using Adversarial Samples", arXiv:1605.07277, 2016 (the cross-technique transferability matrix of
DNNs, logistic regression, SVMs, decision trees and kNN).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advlab._provenance import versions
from advlab._validate import check_batch, check_int, check_labels, check_optional
from advlab.attacks import attack_mode, attack_spec, list_attacks
from advlab.attacks._validation import model_bounds, validate_eps
from advlab.blackbox import check_attack_name, predict_labels, rate_among_correct

__all__ = [
    "KIND_ATTACKS",
    "TransferMatrix",
    "has_input_gradient",
    "model_kind",
    "transfer_matrix",
    "transfer_matrix_checkpoints",
]

# Models whose outputs are piecewise constant (no useful input gradient), by the ``kind`` of their module
# (:func:`advlab.models.from_sklearn`), and the attack made for each (``None``: none; they are targets only).
KIND_ATTACKS: dict[str, str | None] = {"tree": "tree", "forest": None, "knn": "knn"}


def model_kind(model: object) -> str | None:
    """The ``kind`` of a scikit-learn model's module (``"linear"``, ``"svm-rbf"``, ``"tree"``, ``"forest"``,
    ``"knn"``), looked up on the model or on the ``net`` a ``Classifier`` wraps; ``None`` for other models."""
    kind = getattr(getattr(model, "net", model), "kind", None)
    return kind if isinstance(kind, str) and kind else None


def has_input_gradient(model: nn.Module, x: Tensor, y: Tensor, probe: int = 8) -> bool:
    """Whether ``model`` has a non-zero input gradient of its class-``y`` score at one of the first ``probe``
    points of ``x``: ``False`` for models whose outputs are piecewise constant (trees, forests, kNN) or do not
    depend on the input through autograd at all. Evaluated in eval mode with frozen parameters.

    Example:
        >>> import torch, advlab
        >>> m = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> has_input_gradient(m, torch.rand(4, 1, 8, 8), torch.arange(4))
        True
    """
    if not isinstance(model, nn.Module):
        return False
    xs = x[:probe].detach().clone().requires_grad_(True)
    with attack_mode(model), torch.enable_grad():
        out = model(xs)
        if not isinstance(out, Tensor) or out.ndim != 2 or not out.requires_grad:
            return False
        picked = out.gather(1, y[:probe, None].to(out.device)).sum() - torch.logsumexp(out.double(), 1).sum()
        (grad,) = torch.autograd.grad(picked, xs, allow_unused=True)
    return grad is not None and bool((grad != 0).any())


@dataclass
class TransferMatrix:
    """Transfer rates between models: row = source (where the examples were crafted), column = target.

    ``rates[i][j]``: among the test points target ``j`` classifies correctly when clean, the fraction it
    misclassifies on the adversarial examples crafted on source ``i`` (the standard transfer rate); the
    diagonal is each source's white-box rate. A model that could not be a source (no useful input gradient
    and no attack registered for its kind, or no attack given for it) has a row of ``None`` and its reason in
    ``targets_only``.

    Attributes:
        names: the models, in order (rows and columns). attacks: name -> the attack crafted on it (``None``:
            target only). targets_only: name -> why it is not a source.
        rates: ``len(names) x len(names)`` rates (``None`` rows for targets only; ``NaN`` where a target
            classifies no point correctly).
        clean_accuracy / n_correct: per model, on the clean points.
        eps / norm: the budget and norm of every source's attack. n: points. seconds: per source.
        config: every setting (attack options, seed, versions).
        x_adv: name -> ``(n, ...)`` the adversarial examples crafted on that source (not serialised).
    """

    names: list[str]
    attacks: dict[str, str | None]
    targets_only: dict[str, str]
    rates: list[list[float | None] | None]
    clean_accuracy: dict[str, float]
    n_correct: dict[str, int]
    eps: float
    norm: str
    n: int
    seconds: dict[str, float]
    config: dict[str, Any]
    x_adv: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def sources(self) -> list[str]:
        """The models adversarial examples were crafted on."""
        return [name for name in self.names if self.attacks.get(name) is not None]

    def rate(self, source: str, target: str) -> float | None:
        """The transfer rate from ``source`` to ``target`` (``None`` when ``source`` is a target only)."""
        row = self.rates[self.names.index(source)]
        return None if row is None else row[self.names.index(target)]

    def white_box(self) -> dict[str, float | None]:
        """The diagonal: each source's white-box rate."""
        return {name: self.rate(name, name) for name in self.sources}

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict (NaN becomes ``None``)."""

        def clean(v: float | None) -> float | None:
            return v if v is None or math.isfinite(v) else None

        return {
            "names": self.names, "sources": self.sources, "attacks": self.attacks, "targets_only": self.targets_only,
            "eps": self.eps, "norm": self.norm, "n": self.n,
            "rate_definition": "among the points the target classifies correctly when clean, the fraction it "
                               "misclassifies on the examples crafted on the source; diagonal: white-box rate",
            "rates": [None if row is None else [clean(v) for v in row] for row in self.rates],
            "white_box": {k: clean(v) for k, v in self.white_box().items()},
            "clean_accuracy": self.clean_accuracy, "n_correct": self.n_correct, "seconds": self.seconds,
            "config": self.config,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save_heatmap(self, path: str | os.PathLike[str], *, overwrite: bool = False, title: str | None = None,
                     dpi: int = 100) -> Path:
        """Writes the matrix as a PNG heatmap (annotated values, the diagonal marked white-box, targets-only
        rows greyed), atomically; an existing file is replaced only with ``overwrite`` (else
        ``FileExistsError``). See :func:`advlab.report.save_heatmap`."""
        from advlab.report.heatmap import save_heatmap

        if title is None:
            title = f"transfer rate ({self.norm}, eps={self.eps:g}, n={self.n})"
        rows = [None if row is None else [math.nan if v is None else v for v in row] for row in self.rates]
        return save_heatmap(rows, path, row_labels=self.names, col_labels=self.names, title=title,
                            overwrite=overwrite, dpi=dpi)


def _resolve_attacks(
    models: Mapping[str, Any], x: Tensor, y: Tensor, attack: str | Mapping[str, str | None], norm: str | None,
) -> tuple[dict[str, str | None], dict[str, str], str]:
    """Each model's attack (or ``None`` and why), and the norm every source attack runs in."""
    attacks: dict[str, str | None] = {}
    why: dict[str, str] = {}
    if isinstance(attack, Mapping):
        unknown = sorted(set(attack) - set(models))
        if unknown:
            raise ValueError(f"attack names model(s) {', '.join(map(repr, unknown))} that are not among the models "
                             f"({', '.join(map(repr, models))})")
        for name in models:
            chosen = attack.get(name)
            attacks[name] = None if chosen is None else check_attack_name(chosen)
            if chosen is None:
                why[name] = "no attack given for it"
        used = [a for a in attacks.values() if a is not None]
        if not used:
            raise ValueError("the attack mapping gives no model an attack; name at least one source")
        norm = norm if norm is not None else attack_spec(used[0]).default_norm
    else:
        main = check_attack_name(attack)
        norm = norm if norm is not None else attack_spec(main).default_norm
        if norm not in attack_spec(main).norms:
            raise ValueError(f"attack {main!r} does not support norm {norm!r}; supported: "
                             f"{', '.join(attack_spec(main).norms)}")
        for name, model in models.items():
            kind = model_kind(model)
            if kind in KIND_ATTACKS or not has_input_gradient(model, x, y):
                special = KIND_ATTACKS.get(kind or "")
                if special is not None and special in list_attacks() and norm in attack_spec(special).norms:
                    attacks[name] = special
                else:
                    attacks[name] = None
                    what = f"a {kind} model" if kind else "its outputs"
                    reason = (f"no useful input gradient ({what}: piecewise constant)"
                              + (f" and attack {special!r} does not support norm {norm!r}"
                                 if special in list_attacks() else " and no attack registered for its kind"))
                    why[name] = reason
            else:
                attacks[name] = main
    for name, chosen in attacks.items():
        if chosen is not None and norm not in attack_spec(chosen).norms:
            raise ValueError(f"attack {chosen!r} (source {name!r}) does not support norm {norm!r}; supported: "
                             f"{', '.join(attack_spec(chosen).norms)}")
    return attacks, why, norm


def transfer_matrix(
    models: Mapping[str, nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    attack: str | Mapping[str, str | None] = "pgd",
    eps: float = 0.3,
    norm: str | None = None,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    **params: Any,
) -> TransferMatrix:
    """Crafts adversarial examples on each model (white-box) and evaluates every model on them.

    Threat model: each source is attacked white-box within the ``norm`` ball of radius ``eps`` (raw input
    units) and the model bounds; the targets only classify the finished examples. The attacks get the true
    labels ``y``.

    Rate (the standard transfer rate): for source ``s`` and target ``t``, among the points ``t`` classifies
    correctly when clean, the fraction it misclassifies on the examples crafted on ``s``; the diagonal is the
    white-box rate. Models without a useful input gradient (trees, forests, kNN: piecewise-constant outputs,
    found by their ``kind`` or by a zero input gradient, see :func:`has_input_gradient`) are sources through
    the attack registered for their kind (:data:`KIND_ATTACKS`: ``tree``, ``knn``) when it exists and supports
    ``norm``; otherwise they are targets only, reported in ``targets_only`` with the reason (never a row of
    zeros).

    Args:
        models: name -> model (modules taking raw inputs within the same bounds, returning scores).
        x: ``(N, ...)`` test points. y: ``(N,)`` true classes.
        attack: an attack name for every model with gradients (default ``"pgd"``), or a mapping name -> attack
            name (``None`` or absent: target only) choosing each source's attack yourself.
        eps: the budget. norm: default the (first) attack's default norm; every source attack must support it.
        attack_options: attack name -> its hyper-parameters, for any attack used.
        seed: every source's attack starts from a generator seeded with it.
        batch_size: chunk size of the attacks and predictions.
        **params: hyper-parameters of ``attack`` when it is one name (e.g. ``steps=40``).

    Returns:
        A :class:`TransferMatrix`.

    Example:
        >>> import torch, advlab
        >>> x, y = advlab.load_dataset("digits", "test")
        >>> a = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
        >>> m = transfer_matrix({"a": a, "copy": a}, x[:40], y[:40], attack="fgsm", eps=0.1)
        >>> m.rate("a", "copy") == m.rate("a", "a")
        True
    """
    t0 = time.perf_counter()
    if not isinstance(models, Mapping) or not models:
        raise TypeError("models must be a non-empty mapping name -> model")
    named = {str(k): v for k, v in models.items()}
    bounds = {name: model_bounds(m) for name, m in named.items()}
    if len(set(bounds.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in bounds.items())
        raise ValueError(f"the models' input bounds differ ({listed}); a transfer matrix needs one input domain")
    x = check_batch(x, next(iter(bounds.values())))
    y = check_labels(y, x.shape[0], device=x.device)
    budgets = validate_eps(eps)
    if len(budgets) != 1:
        raise ValueError(f"a transfer matrix takes one budget, got eps={list(budgets)}; make one matrix per budget")
    eps_value = budgets[0]
    check_optional("batch_size", batch_size, check_int)
    check_int("seed", seed, minimum=0)
    if params and isinstance(attack, Mapping):
        raise ValueError("with an attack per model, give hyper-parameters as attack_options={attack: {...}}")
    attacks, why, norm = _resolve_attacks(named, x, y, attack, norm)
    options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (attack_options or {}).items()}
    if params and isinstance(attack, str):
        options[attack] = {**options.get(attack, {}), **params}
    for name, opts in options.items():
        valid = attack_spec(check_attack_name(name)).defaults()
        unknown = sorted(set(opts) - set(valid))
        if unknown:
            raise ValueError(f"attack {name!r} has no option(s) {', '.join(unknown)}; its options: "
                             f"{', '.join(sorted(valid)) or '(none)'}")

    clean = {name: predict_labels(m, x, batch_size) for name, m in named.items()}
    rates: list[list[float | None] | None] = []
    seconds: dict[str, float] = {}
    x_adv: dict[str, Tensor] = {}
    for name, model in named.items():
        chosen = attacks[name]
        if chosen is None:
            rates.append(None)
            continue
        t_src = time.perf_counter()
        spec = attack_spec(chosen)
        result = spec.fn(model, x, y, eps=eps_value, norm=norm, generator=torch.Generator().manual_seed(seed),
                         batch_size=batch_size, **options.get(chosen, {}))
        adv = result.x_adv[0].detach()
        x_adv[name] = adv
        rates.append([rate_among_correct(clean[t], predict_labels(target, adv, batch_size), y)
                      for t, target in named.items()])
        seconds[name] = round(time.perf_counter() - t_src, 3)
    config = {
        "attack": attack if isinstance(attack, str) else dict(attack), "attack_options": options, "seed": seed,
        "batch_size": batch_size, "bounds": list(next(iter(bounds.values()))), "versions": versions(),
        "total_seconds": round(time.perf_counter() - t0, 3),
    }
    return TransferMatrix(
        names=list(named), attacks=attacks, targets_only=why, rates=rates,
        clean_accuracy={k: float((v == y).double().mean()) for k, v in clean.items()},
        n_correct={k: int((v == y).sum()) for k, v in clean.items()}, eps=eps_value, norm=norm, n=x.shape[0],
        seconds=seconds, config=config, x_adv=x_adv,
    )


def transfer_matrix_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str]],
    *,
    names: Sequence[str] | None = None,
    data: str | None = None,
    split: str = "test",
    n: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> TransferMatrix:
    """Loads checkpoints and the first ``n`` examples of a dataset split and runs :func:`transfer_matrix`.

    Args:
        checkpoints: checkpoint directories (two or more make a matrix; one gives its white-box rate).
        names: a name per checkpoint (default: each folder's name, made unique with its model name).
        data: a dataset name (default: the one the first checkpoint records). split: default ``"test"``.
        n: points (default all). data_root: folder of the dataset files. device: where the models run.
        **options: the keyword arguments of :func:`transfer_matrix` (``attack``, ``eps``, ``norm``, ``seed``, ...).

    Raises:
        ValueError: checkpoints that take different input shapes or bounds, names that are not one per
            checkpoint or not unique, data of another shape than the models', no dataset recorded or given.
        FileNotFoundError: a missing checkpoint or data.
    """
    from advlab.data import load_dataset
    from advlab.models import load_checkpoint, load_checkpoint_metadata

    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise ValueError("give at least one checkpoint")
    check_optional("n", n, check_int)
    if names is not None:
        names = [str(s) for s in names]
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} name(s) for {len(paths)} checkpoint(s); give one --name per --checkpoint")
    else:
        names = [p.resolve().name or str(p) for p in paths]
    if len(set(names)) != len(names):
        dup = sorted({s for s in names if names.count(s) > 1})
        raise ValueError(f"the models' names must be unique, got {', '.join(map(repr, dup))} more than once; "
                         f"name them with --name")
    metas = [load_checkpoint_metadata(p) for p in paths]
    shapes = [tuple(m["model"]["config"]["in_shape"]) for m in metas]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"{nm} {s}" for nm, s in zip(names, shapes, strict=True))
        raise ValueError(f"the checkpoints take different input shapes ({listed}); a transfer matrix needs models "
                         f"of one input domain")
    dataset = data or metas[0].get("dataset")
    if not dataset:
        raise ValueError("the checkpoint records no dataset; name one (--data)")
    dev = torch.device(device)
    models = {nm: load_checkpoint(p, device=dev) for nm, p in zip(names, paths, strict=True)}
    x_all, y_all = load_dataset(dataset, split, root=data_root)
    if tuple(x_all.shape[1:]) != shapes[0]:
        raise ValueError(f"the models take inputs of shape {shapes[0]} but {dataset!r} has "
                         f"{tuple(x_all.shape[1:])}; pass the dataset they were trained on (--data)")
    matrix = transfer_matrix(models, x_all[:n].to(dev), y_all[:n].to(dev), **options)
    matrix.config.update({
        "checkpoints": {nm: str(p.resolve()) for nm, p in zip(names, paths, strict=True)},
        "models": {nm: m["model"]["name"] for nm, m in zip(names, metas, strict=True)},
        "model_hashes": {nm: m.get("weights", {}).get("content_hash") for nm, m in zip(names, metas, strict=True)},
        "dataset": dataset, "split": split, "n_requested": n, "device": str(dev),
    })
    return matrix
