"""A heatmap of a square matrix of rates (a transfer matrix) with annotated cells, as a PNG written atomically."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from advlab._files import fsync_dir, write_durably
from advlab._validate import check_int

MISSING_COLOR = "#d9d9d9"
DIAGONAL_COLOR = "black"


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Writes ``path`` through ``write(tmp)`` on a temporary file in the same folder, synced and then renamed,
    so a crash leaves the old file or the new one whole. Without ``overwrite`` an existing ``path`` (even one
    created meanwhile) is never replaced: ``FileExistsError``."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{str(target)!r} is a folder; give a file path for the image")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(f"{str(target)!r} exists; pass overwrite=True to replace it, or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write_durably(tmp, write)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target appeared meanwhile: never replaced
            except FileExistsError:
                raise FileExistsError(f"{str(target)!r} appeared while it was being written; kept it") from None
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def save_heatmap(
    values: Sequence[Sequence[float] | None],
    path: str | os.PathLike[str],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str | None = None,
    xlabel: str = "target",
    ylabel: str = "source",
    diagonal: str | None = "white-box",
    missing: str = "target only",
    overwrite: bool = False,
    dpi: int = 100,
) -> Path:
    """Saves a heatmap of ``values`` (rates in ``[0, 1]``) as a PNG, each cell annotated with its percentage.

    The diagonal cells are outlined and labelled ``diagonal`` (a transfer matrix's diagonal is the white-box
    rate); a row given as ``None`` (a model that was not a source) is drawn grey and labelled ``missing``; a
    ``NaN`` cell (a rate without any point to count) shows ``n/a``. Renders with matplotlib's Agg canvas
    without pyplot (no display, no global state) and writes atomically (:func:`write_atomically`).

    Args:
        values: ``R`` rows of ``C`` numbers in ``[0, 1]`` (or ``NaN``), or ``None`` rows.
        path: the PNG file. row_labels / col_labels: ``R`` and ``C`` names.
        title: figure title. xlabel / ylabel: axis names (default ``target`` / ``source``).
        diagonal: text under the diagonal cells' values (``None``: not marked).
        missing: text of a ``None`` row. overwrite: replace an existing file (else ``FileExistsError``).
        dpi: resolution.

    Returns:
        The path written.

    Example:
        >>> import os, tempfile
        >>> p = save_heatmap([[0.9, 0.4], None], os.path.join(tempfile.mkdtemp(), "m.png"),
        ...                  row_labels=["a", "b"], col_labels=["a", "b"])
        >>> p.suffix
        '.png'
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.patches import Rectangle

    rows = len(row_labels)
    cols = len(col_labels)
    if len(values) != rows or rows == 0 or cols == 0:
        raise ValueError(f"values has {len(values)} rows for {rows} row labels; give one row per label (at least one)")
    grid = np.full((rows, cols), np.nan)
    absent = np.zeros(rows, dtype=bool)
    for i, row in enumerate(values):
        if row is None:
            absent[i] = True
            continue
        if len(row) != cols:
            raise ValueError(f"row {i} of values has {len(row)} entries for {cols} column labels")
        grid[i] = [math.nan if v is None else float(v) for v in row]
    check_int("dpi", dpi)

    fig = Figure(figsize=(2.4 + 1.1 * cols, 1.6 + 0.8 * rows), dpi=dpi)
    ax = fig.subplots()
    masked = np.ma.masked_invalid(grid)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = grid[i, j]
            if absent[i]:
                text = missing if j == cols // 2 else ""
                color = "black"
            elif math.isnan(v):
                text, color = "n/a", "black"
            else:
                text = f"{v:.0%}"
                color = "black" if v > 0.6 else "white"
            if diagonal and i == j and not absent[i] and i < cols:
                text = f"{text}\n{diagonal}"
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=DIAGONAL_COLOR, linewidth=2.0))
            if text:
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(cols), labels=list(col_labels), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(rows), labels=list(row_labels), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rate")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), overwrite=overwrite)

