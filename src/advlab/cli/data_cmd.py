"""``advlab data``: download datasets (``fetch``) and show what is registered and present (``list``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from advlab.cli._errors import user_errors
from advlab.cli._outputs import check_writable_folder
from advlab.cli.common import FiniteFloat
from advlab.data import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    dataset_files,
    dataset_info,
    fetch_dataset,
    list_datasets,
    resolve_data_root,
)
from advlab.data.datasets import CIFAR10_SUBSET
from advlab.data.fetch import SOURCES

_DATA_ROOT_HELP = "Folder holding mnist/, fashion-mnist/, cifar10/ (default: $ADVLAB_DATA or the user cache)."


def _data_root_option(func: Any) -> Any:
    return click.option(
        "--data-root", type=click.Path(file_okay=False, path_type=Path), default=None, help=_DATA_ROOT_HELP
    )(func)


@click.group("data")
def data_group() -> None:
    """Download datasets and list which ones are present under the data root."""


@data_group.command("fetch")
@click.argument("name", type=click.Choice(list_datasets()))
@_data_root_option
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to wait for the network (a finite number > 0).")
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    help="Base URL to download from instead of the official sources (repeatable; file:// works).",
)
def fetch_command(name: str, data_root: Path | None, timeout: float, mirrors: tuple[str, ...]) -> None:
    """Download dataset NAME's official files into the data root, verifying their MD5 checksums.

    Files already present with the right checksum are kept. Offline, it stops at once and prints which
    files to place by hand and where.
    """
    root = resolve_data_root(data_root)
    if _status(name, root) not in ("bundled", "present"):  # files to write: check the folder before downloading
        folder = root / (SOURCES[name].folder if name in SOURCES else name)
        check_writable_folder(folder, what=f"{name}'s files", option="--data-root")
    with user_errors(f"{name}: "):
        try:
            folder = fetch_dataset(name, root, timeout=timeout, mirrors=mirrors or None, log=click.echo)
        except (DownloadError, ChecksumError) as err:  # the message lists the files to place by hand: kept whole
            raise click.ClickException(str(err)) from err
    click.echo(f"{name}: ready in {folder}")


def _status(name: str, root: Path) -> str:
    """``bundled``, ``present``, ``subset``, ``partial (train only)``... or ``missing``."""
    if not dataset_info(name).files:
        return "bundled"
    found: dict[str, tuple[Path, ...]] = {}
    for split in ("train", "test"):
        with contextlib.suppress(DatasetNotFoundError):
            found[split] = dataset_files(name, split, root)
    if not found:
        return "missing"
    label = "subset" if any(f.name == CIFAR10_SUBSET for files in found.values() for f in files) else "present"
    if len(found) == 1:
        label += f" ({next(iter(found))} only)"
    return label


@data_group.command("list")
@_data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_command(data_root: Path | None, as_json: bool) -> None:
    """List the datasets: shape, classes and whether their files are under the data root."""
    root = resolve_data_root(data_root)
    rows: list[dict[str, Any]] = []
    for name in list_datasets():
        info = dataset_info(name)
        rows.append(
            {
                "name": name,
                "shape": list(info.shape),
                "num_classes": info.num_classes,
                "classes": list(info.class_names),
                "status": _status(name, root),
                "description": info.description,
            }
        )
    if as_json:
        click.echo(json.dumps({"data_root": str(root), "datasets": rows}, indent=2))
        return
    click.echo(f"data root: {root}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"])
        classes = ", ".join(r["classes"])
        click.echo(f"  {r['name']:<{width}}  {shape:<8}  {r['status']:<20}  {r['num_classes']} classes: {classes}")


COMMANDS = [data_group]
