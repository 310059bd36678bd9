"""What every ``advlab`` command shares: the ``--device``, ``--seed`` and ``--data-root`` options, output
paths checked before the work starts and written atomically (:mod:`advlab.cli._outputs`), and the one-line
error for a user's mistake (:mod:`advlab.cli._errors`).

Errors. A mistake a user can fix (a bad value, a missing or unwritable file, a device this machine lacks)
is one line on stderr, ``advlab: error: <what is wrong and what to do> (run with --debug for the
traceback)``, and exit status 1; click's own usage errors keep their form and status 2. ``advlab --debug``
or ``ADVLAB_DEBUG=1`` lets the original exception through, traceback and all, for bug reports.

The error and output helpers live in their own modules and are re-exported here, so that
``from advlab.cli.common import ...`` keeps working for every name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import torch

from advlab.cli._errors import (
    BUG_HINT,
    DEBUG_ENV,
    DEBUG_HINT,
    USER_ERRORS,
    CommandError,
    Interrupted,
    as_command_error,
    debug_enabled,
    describe,
    error_boundary,
    is_user_error,
    one_line,
    one_line_warnings,
    reraised_for_debug,
    set_debug,
    user_errors,
)
from advlab.cli._outputs import check_output, check_writable_folder, echo_json, write_output, write_text_output

__all__ = [
    "BUG_HINT",
    "DEBUG_ENV",
    "DEBUG_HINT",
    "SEED_MAX",
    "SEED_MIN",
    "USER_ERRORS",
    "CommandError",
    "FiniteFloat",
    "Interrupted",
    "as_command_error",
    "check_output",
    "check_writable_folder",
    "common_options",
    "debug_enabled",
    "describe",
    "echo_json",
    "error_boundary",
    "is_user_error",
    "one_line",
    "one_line_warnings",
    "reraised_for_debug",
    "resolve_device",
    "set_debug",
    "user_errors",
    "write_output",
    "write_text_output",
]

F = TypeVar("F", bound=Callable[..., Any])

# The seeds ``--seed`` takes: what ``torch.Generator.manual_seed`` takes, without the negative aliases
# (torch maps -1 to 2**64 - 1, so two spellings would name one stream).
SEED_MIN = 0
SEED_MAX = 2**64 - 1


def resolve_device(device: str | torch.device) -> torch.device:
    """The device to compute on: ``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda``,
    ``cuda:N``, ``mps`` (and ``xpu``) are checked to exist here. Raises ``click.BadParameter`` (one line
    saying what to use instead) for anything else, including ``meta``, which holds no data."""
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise click.BadParameter(f"{text!r} is not a device; use auto, cpu, cuda or cuda:N",
                                 param_hint="--device") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(
                f"{text!r}: CUDA is not available here (no GPU or driver, or a CPU-only PyTorch); use --device cpu "
                "or auto", param_hint="--device")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise click.BadParameter(f"{text!r} does not exist: this machine has {count} CUDA device(s), "
                                     f"cuda:0 to cuda:{count - 1}", param_hint="--device")
        return dev
    if dev.type in ("mps", "xpu"):
        backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise click.BadParameter(f"{text!r}: {dev.type.upper()} is not available here; use --device cpu or auto",
                                     param_hint="--device")
        return dev
    why = "meta tensors hold no data, so no model can run on them" if dev.type == "meta" else (
        f"advlab does not run on {dev.type!r} devices")
    raise click.BadParameter(f"{text!r}: {why}; use auto, cpu, cuda or cuda:N", param_hint="--device")


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device`` callback: refuses an unusable device while the arguments are parsed, before any work."""
    resolve_device(value)
    return value


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which pass range checks)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def common_options(func: F) -> F:
    """Adds ``--device``, ``--seed`` and ``--data-root`` to a command."""
    func = click.option(
        "--data-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder holding mnist/, fashion-mnist/, cifar10/ (default: $ADVLAB_DATA or the user cache).",
    )(func)
    func = click.option(
        "--seed", type=click.IntRange(SEED_MIN, SEED_MAX), default=0, show_default=True,
        help=f"Random seed, an integer from {SEED_MIN} to 2**64-1.",
    )(func)
    func = click.option(
        "--device", default="auto", show_default=True, callback=_check_device,
        help="auto (CUDA when present), cpu, cuda, cuda:N or mps.",
    )(func)
    return func
