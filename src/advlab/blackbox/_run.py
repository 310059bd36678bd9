"""The substitute attack on a saved checkpoint over a dataset split (what ``advlab blackbox`` runs)."""

from __future__ import annotations

import os
from typing import Any

import torch

from advlab._validate import check_int, check_optional
from advlab.blackbox._substitute import BlackBoxReport, split_seed_set, substitute_attack
from advlab.oracle import Oracle


def substitute_attack_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    data: str | None = None,
    split: str = "test",
    data_root: str | os.PathLike[str] | None = None,
    seed_size: int = 150,
    n: int | None = None,
    max_queries: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **options: Any,
) -> BlackBoxReport:
    """Puts the checkpoint's model behind a label-only :class:`~advlab.oracle.Oracle` and runs
    :func:`~advlab.blackbox.substitute_attack` on a dataset split.

    The split is divided with :func:`~advlab.blackbox.split_seed_set` (from ``seed``): ``seed_size`` points,
    balanced across classes, are the attacker's seed set; the first ``n`` of the others (all by default) are
    attacked and evaluated. The substitute uses the dataset's normalisation (public knowledge of the input
    domain). The report's config also names the checkpoint, its model and hash, the data and the seed set.

    Args:
        checkpoint: a checkpoint directory (:func:`advlab.save_checkpoint`).
        data: a dataset name (default: the one the checkpoint records). split: default ``"test"``.
        data_root: folder of the dataset files.
        seed_size: seed points (default 150, Papernot et al.'s choice). n: points attacked (default all others).
        max_queries: the oracle's total query budget (``None``: unlimited).
        device: where the models run. seed: the seed set, the substitute and the attack.
        **options: the other keyword arguments of :func:`~advlab.blackbox.substitute_attack` (``attack``,
            ``eps``, ``rounds``, ``lam``, ``tau``, ``reservoir``, ``model`` (the substitute's), ...).

    Raises:
        ValueError: a checkpoint without a dataset when ``data`` is not given, data of another shape than the
            model's, bad settings. FileNotFoundError: missing checkpoint or data.
    """
    from advlab.models import load_checkpoint_data

    seed_size = check_int("seed_size", seed_size)
    check_optional("n", n, check_int)
    loaded = load_checkpoint_data(checkpoint, data=data, split=split, data_root=data_root, device=device)
    model, dataset, x_all, y_all, dev = loaded.model, loaded.dataset, loaded.x, loaded.y, loaded.device
    if seed_size >= len(y_all):
        raise ValueError(f"seed_size={seed_size} leaves no {split} example of {dataset!r} ({len(y_all)}) to attack")
    seed_idx, rest = split_seed_set(y_all, seed_size, seed=seed)
    rest = rest[:n]
    oracle = Oracle(model, output="labels", max_total_queries=max_queries)
    options.setdefault("dataset", dataset if isinstance(options.get("model", "cnn-small"), str) else None)
    report = substitute_attack(oracle, x_all[seed_idx].to(dev), x_all[rest].to(dev), y_all[rest].to(dev),
                               seed=seed, **options)
    report.config.update({
        **loaded.provenance(), "seed_size": seed_size, "n_requested": n, "max_queries": max_queries,
        "device": str(dev), "seed_indices": seed_idx.tolist(),
    })
    return report
