"""``advlab demo``: the main job end to end on the bundled digits (:func:`advlab.demo.run_demo`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from advlab.cli._errors import user_errors
from advlab.cli.common import resolve_device


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("advlab-demo"), show_default=True,
              help="Folder for the results store (results.sqlite), the checkpoints and report.html.")
@click.option("--data", type=click.Choice(["digits", "mnist"]), default="digits", show_default=True,
              help="digits: the bundled 8x8 digits, minutes on a CPU; mnist: the same at full size (needs the "
                   "MNIST files, --data-root; much longer).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the dataset files (default: $ADVLAB_DATA, else the user cache folder).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Cells computed at once (local processes).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", "--force", "overwrite", is_flag=True,
              help="Rebuild report.html if it exists (the store is resumed, never replaced).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo_command(out: Path, data: str, data_root: Path | None, workers: int, device: str, overwrite: bool,
                 no_progress: bool) -> None:
    """Answer "how robust is this model, really?" end to end, in a few minutes on the bundled digits.

    Trains a standard CNN and the same CNN adversarially trained (fast-AT); evaluates both with the
    worst-case standard suite (APGD-CE, targeted APGD-DLR, Square) over a grid of L-inf budgets, with the
    self-checks that catch gradient masking and the active test; attacks the standard model as a black box
    through a substitute and measures transfer between the models; keeps every result in a SQLite store and
    renders a self-contained HTML report. Run again, it resumes from the store.

    \b
    Example:
      advlab demo                      # advlab-demo/results.sqlite and advlab-demo/report.html
      advlab demo --data mnist --data-root ../shared/data --out demo-mnist
    """
    from advlab.demo import check_demo_folder, run_demo

    with user_errors():
        check_demo_folder(out, overwrite=overwrite)
        result = run_demo(out, data=data, data_root=data_root, device=str(resolve_device(device)),
                          workers=workers, progress=not no_progress, overwrite=overwrite)
    click.echo(result.sweep.text())
    click.echo("")
    click.echo(result.summary.to_markdown())
    for row in result.blackbox:
        rate = row.get("success_rate", row.get("oracle_misclassification"))
        queries = row.get("queries", row.get("total_queries"))
        if rate is not None:
            click.echo(f"\nblack-box substitute attack on the standard model: {float(rate):.1%} of the attacked points "
                       f"misclassified by the target" + (f", {queries} label queries" if queries is not None else ""))
    if result.warnings:
        click.echo(f"\n{len(result.warnings)} self-check warning(s):")
        for model, check, seen in result.warnings:
            click.echo(f"  {model}: {check}: {seen}")
    else:
        click.echo("\nall self-checks passed")
    click.echo(f"\nreport: {os.fspath(result.report)}")
    click.echo(f"store:  {os.fspath(result.store)}")


COMMANDS = [demo_command]
