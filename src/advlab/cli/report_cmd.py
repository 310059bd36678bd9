"""``advlab report``: the self-contained HTML report of a results store (and its tables as CSV / Markdown).

Parses the arguments, reads the store read-only (:func:`advlab.report.load_records`), calls
:func:`advlab.report.write_report` and prints the paths written. The outputs are checked before the store is
read and written atomically, never replacing an existing file unless ``--overwrite`` (or ``--force``).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from advlab.cli._errors import user_errors
from advlab.cli._outputs import check_output, check_writable_folder


@click.command("report")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write (one self-contained page: opens offline, no script needed).")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every table as CSV into this folder (summary.csv, attack_defense.csv, ...).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tables as one Markdown file.")
@click.option("--title", default=None, help="The page's title (default: advlab robustness report).")
@click.option("--overwrite", "--force", "overwrite", is_flag=True,
              help="Replace output files that already exist.")
def report_command(store: Path, out: Path, csv_dir: Path | None, markdown: Path | None, title: str | None,
                   overwrite: bool) -> None:
    """Render the results STORE (an advlab results store file) as one self-contained HTML report.

    Sections: self-check warnings first (unreliable evaluations flagged), a worst-case summary per model,
    robustness curves, the attack x defense table, transfer heatmaps, image grids, the cost of every
    evaluation and the provenance of every record.

    \b
    Example:
      advlab report results.sqlite --out report.html --csv tables/ --markdown report.md
    """
    from advlab.report import TABLE_NAMES, load_records, write_report
    from advlab.report._tables import Report

    inputs = {"the store": store}
    check_output(out, option="--out", inputs=inputs, others={"--markdown": markdown}, overwrite=overwrite)
    if markdown is not None:
        check_output(markdown, option="--markdown", inputs=inputs, others={"--out": out}, overwrite=overwrite)
    csv_files: list[Path] = []
    if csv_dir is not None:
        check_writable_folder(csv_dir, what="the CSV tables", option="--csv")
        csv_files = [csv_dir / f"{name}.csv" for name in TABLE_NAMES]
        for path in csv_files:
            check_output(path, option="--csv", inputs=inputs, others={"--out": out, "--markdown": markdown},
                         overwrite=overwrite)
    with user_errors():
        records = load_records(store)
        written = write_report(records, out, csv_dir=csv_dir, markdown=markdown, overwrite=overwrite,
                               **({"title": title} if title else {}))
    click.echo(os.fspath(written))
    if markdown is not None:
        click.echo(os.fspath(markdown))
    for path in csv_files:
        click.echo(os.fspath(path))
    unreliable = [e for e in Report.of(records).evaluations if e.reliable is False]
    if unreliable:
        click.echo(f"advlab: warning: {len(unreliable)} evaluation(s) are unreliable (a self-check failed); "
                   f"see the warnings at the top of {os.fspath(written)}", err=True)


COMMANDS = [report_command]
