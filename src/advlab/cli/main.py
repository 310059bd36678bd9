"""Entry point of the ``advlab`` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from advlab import __version__
from advlab._allocator import keep_freed_memory
from advlab.cli import (
    attack_cmd,
    bench_cmd,
    blackbox_cmd,
    data_cmd,
    demo_cmd,
    evaluate_cmd,
    list_cmd,
    report_cmd,
    train_cmd,
    transfer_cmd,
)
from advlab.cli._errors import (
    DEBUG_ENV,
    Interrupted,
    as_command_error,
    debug_enabled,
    error_boundary,
    one_line_warnings,
    reraised_for_debug,
    set_debug,
)


class _Group(click.Group):
    """The ``advlab`` group: every command runs inside :func:`~advlab.cli._errors.error_boundary` (and shows
    warnings as one line each), so a user's mistake is one line, whether the command is run by :func:`main`
    or by click's test runner."""

    def invoke(self, ctx: click.Context) -> Any:
        with error_boundary(ctx), one_line_warnings(ctx):
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True,
              help=f"On an error, show the full Python traceback (for bug reports); {DEBUG_ENV}=1 does the same.")
@click.version_option(__version__, prog_name="advlab")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """advlab: attack, defend and benchmark machine-learning models with adversarial examples."""
    set_debug(ctx, debug)


for _module in (data_cmd, train_cmd, attack_cmd, evaluate_cmd, blackbox_cmd, transfer_cmd, bench_cmd, report_cmd,
                demo_cmd, list_cmd):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Runs the ``advlab`` command (``argv``: the arguments, default ``sys.argv[1:]``) and exits.

    The error boundary: click's usage errors print as click prints them (exit 2); any other error a user
    can cause prints one line, ``advlab: error: ... (run with --debug for the traceback)`` (exit 1); an
    unexpected exception prints one line asking for a bug report (exit 1); Ctrl-C exits with 130.
    ``--debug`` or ``ADVLAB_DEBUG=1`` shows the traceback instead.

    First makes glibc ``malloc`` keep freed memory in the process (:func:`advlab.keep_freed_memory`: attacks
    and training on CPU ran about 20 % faster with it on the benchmark machine); ``ADVLAB_DEFAULT_MALLOC=1``
    keeps the C library's defaults."""
    try:
        if os.environ.get("ADVLAB_DEFAULT_MALLOC", "") not in ("1", "true", "yes"):
            keep_freed_memory()
        code = cli.main(args=None if argv is None else list(argv), prog_name="advlab", standalone_mode=False)
    except click.Abort as err:  # Ctrl-C or end of input outside a command (inside one: error_boundary)
        if isinstance(err.__context__, KeyboardInterrupt):
            error: click.ClickException = Interrupted()
        else:
            error = click.ClickException("aborted")
        error.show()
        sys.exit(error.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        Interrupted().show()
        sys.exit(Interrupted.exit_code)
    except Exception as err:  # escaped the commands' boundary (start-up, argument parsing of the group)
        if reraised_for_debug(err) or debug_enabled():
            raise
        failure = as_command_error(err)
        failure.show()
        sys.exit(failure.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
