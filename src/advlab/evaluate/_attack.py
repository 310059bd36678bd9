"""One attack, one record: :func:`evaluate_attack` and :func:`attack_checkpoint`."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advlab._provenance import versions
from advlab.attacks import AttackResult, attack_mode, attack_spec, progress
from advlab.threat import choose_targets


@dataclass
class EvalRecord:
    """The record of one attack on one model: what was run, what came out, what it cost.

    Attributes:
        attack: the attack's registered name. config: the full configuration (the attack's hyper-parameters,
            norm, budgets, targeting, batch size, seed and provenance such as library versions).
        n: examples attacked. n_excluded: examples left out (a fixed target equal to the true class).
        clean_accuracy: accuracy on the clean examples attacked.
        results: one row per budget: ``eps``, ``robust_accuracy`` (accuracy w.r.t. the true classes on the
            adversarial inputs), ``success_rate`` (untargeted: misclassified; targeted: the target hit by the
            attack, over all ``n`` examples, those already at their target before it not counted),
            ``median_distance`` / ``mean_distance`` of the successful examples (NaN when none); black-box
            attacks add the queries per example (``mean_queries``, ``median_queries``, and of the successful
            examples ``mean_queries_success``, ``median_queries_success``).
        n_already_at_target: targeted runs: examples the model already assigned to their target before the
            attack (attacked, but not counted as successes; an ``AlreadyAtTargetWarning`` says so); 0 when
            untargeted.
        n_forward / n_backward / n_queries: cost, per example evaluated (target choice included); for a
            black-box attack ``n_queries`` counts the attacker's queries, ``n_forward`` adds the unmetered checks.
        seconds: wall time. result: the :class:`AttackResult` (not serialised).
        x / y: the examples attacked and their true classes (not serialised).
        model: the model attacked (not serialised), e.g. for an image grid of the record.
    """

    attack: str
    config: dict[str, Any]
    n: int
    n_excluded: int
    clean_accuracy: float
    results: list[dict[str, float]]
    n_forward: int
    n_backward: int
    n_queries: int
    seconds: float
    result: AttackResult = field(repr=False)
    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)
    n_already_at_target: int = 0
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def targeted(self) -> bool:
        """Whether the run was targeted."""
        return self.result.targeted

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict of the record (NaN and inf become ``None``)."""
        return json_safe({
            "attack": self.attack, "config": self.config, "n": self.n, "n_excluded": self.n_excluded,
            "n_already_at_target": self.n_already_at_target, "targeted": self.targeted,
            "clean_accuracy": self.clean_accuracy, "results": self.results,
            "n_forward": self.n_forward, "n_backward": self.n_backward, "n_queries": self.n_queries,
            "seconds": self.seconds,
            "examples_per_second": self.n / self.seconds if self.seconds > 0 else None,
        })


def json_safe(value: Any) -> Any:
    """Replaces NaN/inf by ``None``, tuples by lists and tensors by lists, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Tensor):
        return json_safe(value.tolist())
    return value


def _rows(result: AttackResult, true_labels: Tensor) -> list[dict[str, float]]:
    clean_ok = result.clean_pred == true_labels
    rows = []
    for row, pred in zip(result.summary(), result.adv_pred, strict=True):
        row["robust_accuracy"] = float((clean_ok & (pred == true_labels)).double().mean())
        rows.append(row)
    return rows


def _clean_logits(model: nn.Module, x: Tensor, batch_size: int | None) -> Tensor:
    step = batch_size or x.shape[0]
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + step]) for i in range(0, x.shape[0], step)])


def evaluate_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str,
    *,
    eps: float | list[float] | tuple[float, ...],
    targets: str | int | Tensor | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    **params: Any,
) -> EvalRecord:
    """Runs the registered ``attack`` on ``(x, y)`` and summarises it per budget.

    Args:
        model: a classifier returning logits for inputs within its bounds.
        x: ``(N, ...)`` inputs. y: ``(N,)`` true classes.
        attack: a registered attack name (``advlab.attacks.list_attacks()``).
        eps: one budget or several (raw input units; for ``l0``, numbers of features).
        targets: ``None`` for an untargeted run; ``"least-likely"``, ``"random"`` or a class index to choose
            targets with :func:`advlab.threat.choose_targets` (examples whose true class is a fixed target are
            left out and counted in ``n_excluded``); or a ``(N,)`` tensor of targets. Examples the model
            already assigns to their target (e.g. a misclassified example whose random target is its clean
            prediction) are attacked but not counted as successes: ``n_already_at_target`` counts them and
            the attack warns (``AlreadyAtTargetWarning``).
        batch_size: examples per chunk, batched by the attack engine (default: all at once).
        generator: randomness of random starts and random targets; same seed, same record.
        show_progress: a progress bar over the examples on stderr (tqdm).
        **params: the attack's hyper-parameters and ``norm`` (see its config, ``attack_spec(name).config``).

    Returns:
        An :class:`EvalRecord`.
    """
    t0 = time.perf_counter()
    spec = attack_spec(attack)
    extra_forward = 0
    target_mode: str | int | None = None
    labels, true_labels = y, None
    n_excluded = 0
    if targets is not None:
        if not spec.targeted:
            raise ValueError(f"attack {attack!r} has no targeted mode; run it without targets")
        if isinstance(targets, Tensor):
            labels, target_mode = targets.to(y.device), "given"
        else:
            logits = _clean_logits(model, x, batch_size) if targets == "least-likely" else None
            extra_forward = 0 if logits is None else x.shape[0]
            labels = choose_targets(targets, y, logits=logits, num_classes=None if logits is not None else
                                    _num_classes(model, x), generator=generator)
            target_mode = targets
        keep = labels != y
        if not bool(keep.any()):
            raise ValueError(f"every example already has its target class {targets!r} as its true class; "
                             f"choose another target or more examples")
        n_excluded = int((~keep).sum())
        x, y, labels, true_labels = x[keep], y[keep], labels[keep], y[keep]
    kwargs: dict[str, Any] = dict(params)
    if targets is not None:
        kwargs.update(targeted=True, true_labels=true_labels)
    with _progress_bar(attack, x.shape[0]) if show_progress else nullcontext():
        result = spec.fn(model, x, labels, eps=list(eps) if isinstance(eps, tuple) else eps,
                         batch_size=batch_size, generator=generator, **kwargs)
    config = dict(result.config)
    config.update({"n": x.shape[0], "target_mode": target_mode, "versions": versions()})
    return EvalRecord(
        attack=attack, config=config, n=x.shape[0], n_excluded=n_excluded,
        clean_accuracy=float((result.clean_pred == y).double().mean()), results=_rows(result, y),
        n_forward=result.n_forward + extra_forward, n_backward=result.n_backward,
        n_queries=result.n_queries + extra_forward, seconds=time.perf_counter() - t0, result=result, x=x, y=y,
        n_already_at_target=result.n_already_at_target, model=model,
    )


@contextmanager
def _progress_bar(name: str, total: int) -> Iterator[None]:
    """A tqdm bar over the examples of one attack call, fed by the engine's progress hook."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=name, unit="ex", file=sys.stderr, dynamic_ncols=True)
    try:
        with progress(lambda done, _total: bar.update(done - bar.n)):
            yield
    finally:
        bar.close()


def _num_classes(model: nn.Module, x: Tensor) -> int:
    """The number of classes, from the model's config when recorded, else one forward pass of one example."""
    recorded = getattr(model, "model_config", {}).get("num_classes")
    if isinstance(recorded, int):
        return recorded
    return int(_clean_logits(model, x[:1], None).shape[1])


def attack_checkpoint(
    checkpoint: str | Path,
    attack: str,
    *,
    eps: float | list[float] | tuple[float, ...],
    data: str | None = None,
    split: str = "test",
    n: int | None = None,
    data_root: str | Path | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    targets: str | int | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    **params: Any,
) -> EvalRecord:
    """Loads a checkpoint and the first ``n`` examples of a dataset split and runs :func:`evaluate_attack`;
    the record's config also names the checkpoint, its model and hash, the data and the seed.

    ``data`` defaults to the dataset recorded in the checkpoint. Raises ``ValueError`` (bad names, shapes or
    values) or ``FileNotFoundError`` (missing checkpoint or data) with a message naming the fix.
    """
    from advlab.models import load_checkpoint_data

    loaded = load_checkpoint_data(checkpoint, data=data, split=split, data_root=data_root, device=device)
    dev = loaded.device
    x, y = loaded.x[:n].to(dev), loaded.y[:n].to(dev)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    record = evaluate_attack(loaded.model, x, y, attack, eps=eps, targets=targets, batch_size=batch_size,
                             generator=generator, show_progress=show_progress, **params)
    record.config.update({**loaded.provenance(), "n_requested": n, "seed": seed, "device": str(dev)})
    return record
