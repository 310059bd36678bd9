"""The one-line error of every ``advlab`` command: which exceptions are a user's mistake (or a limit of the
machine) and which are a bug, how each is worded, and the boundary that shows it.

A mistake a user can fix (a bad value, a missing or unwritable file, a device this machine lacks) is one
line on stderr, ``advlab: error: <what is wrong and what to do> (run with --debug for the traceback)``, and
exit status 1; click's own usage errors keep their form and status 2. ``advlab --debug`` or
``ADVLAB_DEBUG=1`` lets the original exception through, traceback and all, for bug reports.
"""

from __future__ import annotations

import contextlib
import errno
import os
import traceback
import warnings
from collections.abc import Iterator
from typing import IO, Any, TextIO

import click

DEBUG_ENV = "ADVLAB_DEBUG"
_DEBUG_KEY = "advlab.debug"
DEBUG_HINT = "run with --debug for the traceback"
BUG_HINT = "this is a bug: please report it with the output of the same command run with --debug"
_TRUE = ("1", "true", "yes", "on")


class CommandError(click.ClickException):
    """A mistake a user can fix, shown as one line on stderr:
    ``advlab: error: <message> (<hint>)``; exits with status 1."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = DEBUG_HINT) -> None:
        super().__init__(one_line(message))
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        suffix = f" ({self.hint})" if self.hint else ""
        click.echo(f"advlab: error: {self.format_message()}{suffix}", file=file, err=file is None)


class Interrupted(CommandError):
    """Ctrl-C: ``advlab: error: interrupted``, exit status 130 (128 + SIGINT, as shells report it)."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted", hint="")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """Whether errors should show their traceback: ``ADVLAB_DEBUG=1`` or ``advlab --debug`` (recorded in
    the context's shared ``meta`` by :func:`set_debug`)."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE:
        return True
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_DEBUG_KEY))


def set_debug(ctx: click.Context, debug: bool) -> None:
    """Records ``--debug`` for every command under ``ctx`` (``meta`` is shared with child contexts)."""
    ctx.meta[_DEBUG_KEY] = bool(debug)


# Errors that come from what a user gave or from the machine, not from a bug of ours. torch reports the
# machine's limits as ``RuntimeError``; those are told apart by their message.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, MemoryError)
_MACHINE_LIMITS = (
    "out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
    "no cuda gpus are available", "cuda driver", "not compiled with", "not linked with support",
)
_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")
# A TypeError with one of these is Python's own complaint about a call or an operation: our bug.
_PYTHON_TYPE_ERRORS = (
    "unexpected keyword argument", "positional argument", "'nonetype'", "is not callable", "unsupported operand",
    "not subscriptable", "not iterable",
)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a mistake a user can fix (or a limit of the machine) rather than a bug."""
    if isinstance(err, TypeError):
        text = str(err).lower()
        return not any(phrase in text for phrase in _PYTHON_TYPE_ERRORS)
    if isinstance(err, USER_ERRORS):
        return True
    if isinstance(err, RuntimeError):
        text = str(err).lower()
        return any(phrase in text for phrase in _MACHINE_LIMITS)
    return False


def describe(err: BaseException) -> str:
    """One line saying what went wrong: ``No such file or directory: x.json`` rather than
    ``[Errno 2] No such file or directory: 'x.json'``; a memory error says to lower ``--batch-size``."""
    if isinstance(err, OSError) and err.strerror and err.errno is not None:
        text = err.strerror
        if err.filename is not None:
            text += f": {os.fsdecode(err.filename)}"
        if err.filename2 is not None:
            text += f" -> {os.fsdecode(err.filename2)}"
        if err.errno == errno.ENOSPC:
            text += "; free some space or write elsewhere"
    else:
        text = one_line(str(err)) or type(err).__name__
    if isinstance(err, MemoryError) or any(phrase in text.lower() for phrase in _MEMORY):
        text = f"out of memory ({text or 'MemoryError'}); use a smaller --batch-size"
    return one_line(text)


def as_command_error(err: BaseException, prefix: str = "") -> CommandError:
    """``err`` as the one-line error to show: a user's mistake as it is, anything else as a bug to report."""
    if is_user_error(err):
        return CommandError(prefix + describe(err))
    return CommandError(f"{prefix}{type(err).__name__}: {describe(err)}", hint=BUG_HINT)


_PASS_THROUGH = (click.ClickException, click.exceptions.Exit, click.Abort)
_DEBUG_MARK = "_advlab_debug"


def reraised_for_debug(err: BaseException) -> bool:
    """Whether ``err`` was let through by :func:`error_boundary` because ``--debug`` was on."""
    return bool(getattr(err, _DEBUG_MARK, False))


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Turns a user's mistake raised inside (``ValueError``, ``OSError``...) into a one-line
    :class:`CommandError` starting with ``prefix``; anything else (a bug) goes on to :func:`error_boundary`.
    Under ``--debug`` nothing is turned."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except Exception as err:
        if debug_enabled() or not is_user_error(err):
            raise
        raise as_command_error(err, prefix) from err


@contextlib.contextmanager
def error_boundary(ctx: click.Context | None = None) -> Iterator[None]:
    """The boundary around every command: a user's mistake is one line (exit 1), any other exception is
    one line that asks for a bug report (exit 1), Ctrl-C is ``advlab: error: interrupted`` (exit 130).
    Under ``--debug`` exceptions go through unchanged, with their traceback (Ctrl-C prints it first)."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except KeyboardInterrupt:
        if debug_enabled(ctx):
            traceback.print_exc()
        raise Interrupted() from None
    except Exception as err:
        if debug_enabled(ctx):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(err, _DEBUG_MARK, True)
            raise
        raise as_command_error(err) from err


@contextlib.contextmanager
def one_line_warnings(ctx: click.Context | None = None) -> Iterator[None]:
    """Shows each Python warning raised inside as one line, ``advlab: warning: <message>``, on stderr
    (Python's own form, with the source line, under ``--debug``)."""
    with warnings.catch_warnings():
        python_show = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if debug_enabled(ctx):  # decided per warning: ``--debug`` is parsed after this context is entered
                python_show(message, category, filename, lineno, file, line)
            else:
                click.echo(f"advlab: warning: {one_line(str(message))}", file=file, err=file is None)

        warnings.showwarning = show
        yield
