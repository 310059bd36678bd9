"""``advlab bench``: run a benchmark spec (TOML) into a results store, computing only the missing cells.

The spec is checked before anything runs (a mistake names its line and field); each cell's record is written
to the store as soon as it finishes, so a run killed at any moment keeps every finished cell and a restart
computes only the others. The models the sweep trains are saved beside the store (``--workdir``).
"""

from __future__ import annotations

from pathlib import Path

import click

from advlab.cli._errors import CommandError, user_errors
from advlab.cli._outputs import check_writable_folder
from advlab.cli.common import SEED_MIN, resolve_device


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    resolve_device(value)
    return value


@click.command("bench")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", "store_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The results store (an SQLite file, created when missing).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: processes on this machine; ray: Ray tasks (pip install 'advlab[ray]').")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run at once.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the checkpoints of the models the sweep trains (default: STORE's name with .work).")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto (CUDA when present), cpu, cuda, cuda:N or mps; part of every cell's config.")
@click.option("--seed", type=click.IntRange(SEED_MIN, 2**63 - 1), default=None,
              help=f"Replaces the spec's [sweep] seed (an integer from {SEED_MIN} to 2**63-1).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding mnist/, fashion-mnist/, cifar10/ (default: $ADVLAB_DATA or the user cache).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def bench_command(spec: Path, store_path: Path, executor: str, workers: int, workdir: Path | None, device: str,
                  seed: int | None, data_root: Path | None, no_progress: bool) -> None:
    """Run the cells of a benchmark SPEC (TOML) that are missing from --store.

    \b
    Example:
      advlab bench examples/bench-digits.toml --store bench.sqlite --workers 2
      advlab report bench.sqlite --out report.html
    """
    from advlab.store import ResultStore
    from advlab.sweep import RAY_INSTALL, default_workdir, load_spec, run_sweep

    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise CommandError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    dev = resolve_device(device)
    with user_errors():
        parsed = load_spec(spec)
    work = workdir if workdir is not None else default_workdir(store_path)
    check_writable_folder(store_path.parent if str(store_path.parent) else Path("."), what=str(store_path),
                          option="--store")
    check_writable_folder(work, what="the sweep's checkpoints", option="--workdir")
    with user_errors(), ResultStore(store_path) as store:
        summary = run_sweep(parsed, store, executor=executor, workers=workers, progress=not no_progress,
                            device=str(dev), seed=seed, workdir=work, data_root=data_root)
    click.echo(summary.text())
    click.echo(f"store: {summary.store}")
    for label, message in summary.failures:
        click.echo(f"failed: {label}: {message}", err=True)
    if summary.failed or summary.skipped:
        first = summary.failures[0] if summary.failures else ("", "")
        raise CommandError(f"{summary.failed} cell(s) failed and {summary.skipped} were skipped; the first: "
                           f"{first[0]}: {first[1]}; fix it and run the same command again (finished cells are kept)")


COMMANDS = [bench_command]
