"""Options shared by every ``advlab`` command: ``--device``, ``--seed``, ``--data-root``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import torch

F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise click.BadParameter(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA was requested but is not available here; use --device cpu or auto")
    return dev


def common_options(func: F) -> F:
    """Adds ``--device``, ``--seed`` and ``--data-root`` to a command."""
    func = click.option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder holding mnist/, fashion-mnist/, cifar10/ (default: $ADVLAB_DATA or the user cache).",
    )(func)
    func = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(func)
    func = click.option(
        "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N."
    )(func)
    return func


def echo_json(payload: dict[str, Any], out: Path | None = None) -> None:
    """Prints ``payload`` as JSON on stdout and, when ``out`` is given, writes it there too."""
    text = json.dumps(payload, indent=2, sort_keys=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    click.echo(text)
