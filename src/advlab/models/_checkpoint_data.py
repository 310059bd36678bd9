"""A checkpoint together with a split of the dataset it was trained on: what the commands that evaluate a
saved model (``advlab attack``, ``advlab blackbox``) load first."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advlab.models.checkpoint import load_checkpoint, load_checkpoint_metadata
from advlab.models.classifier import Classifier


@dataclass
class CheckpointData:
    """A loaded checkpoint and a dataset split of its input shape.

    Attributes:
        checkpoint: the directory. model: the loaded :class:`Classifier` (on ``device``). meta: the checkpoint's
        metadata. dataset: the dataset's name. split: the split. x, y: the whole split (on the CPU).
        device: where the model is.
    """

    checkpoint: Path
    model: Classifier
    meta: dict[str, Any]
    dataset: str
    split: str
    x: Tensor
    y: Tensor
    device: torch.device

    def provenance(self) -> dict[str, Any]:
        """What a result computed on it records: the checkpoint, its model, configuration and weights' hash,
        the dataset and split."""
        return {
            "checkpoint": str(self.checkpoint.resolve()), "model": self.meta["model"]["name"],
            "model_config": self.meta["model"]["config"],
            "model_hash": self.meta.get("weights", {}).get("content_hash"), "dataset": self.dataset,
            "split": self.split,
        }


def load_checkpoint_data(
    checkpoint: str | os.PathLike[str],
    *,
    data: str | None = None,
    split: str = "test",
    data_root: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> CheckpointData:
    """Loads ``checkpoint`` onto ``device`` and the ``split`` of ``data`` (default: the dataset the checkpoint
    records).

    Raises ``ValueError`` when the checkpoint records no dataset and none is given, or when the dataset's
    inputs have another shape than the model's (both naming ``--data`` as the fix); ``FileNotFoundError`` for a
    missing checkpoint or data.
    """
    from advlab.data import load_dataset

    meta = load_checkpoint_metadata(checkpoint)
    dev = torch.device(device)
    model = load_checkpoint(checkpoint, device=dev)
    dataset = data or meta.get("dataset")
    if not dataset:
        raise ValueError("the checkpoint records no dataset; name one (--data)")
    x, y = load_dataset(dataset, split, root=data_root)
    in_shape = tuple(meta["model"]["config"]["in_shape"])
    if tuple(x.shape[1:]) != in_shape:
        raise ValueError(
            f"the model takes inputs of shape {in_shape} but {dataset!r} has {tuple(x.shape[1:])}; "
            f"pass the dataset the model was trained on (--data)"
        )
    return CheckpointData(Path(checkpoint), model, meta, dataset, split, x, y, dev)
