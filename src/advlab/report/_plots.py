"""The figures of a report as PNG bytes: robustness curves (accuracy vs budget) and transfer heatmaps, rendered
with matplotlib's Agg canvas without pyplot (no display, no global state)."""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from advlab.report._tables import Evaluated, worst_case

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_WORST_COLOR = "black"


def is_png(data: Any) -> bool:
    """Whether ``data`` is bytes that start like a PNG file."""
    return isinstance(data, (bytes, bytearray)) and bytes(data[:8]) == PNG_SIGNATURE


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _curve(ev: Evaluated) -> tuple[list[float], list[float]]:
    """The points of one evaluation's curve: (0, clean accuracy) first when 0 is not a budget (no
    perturbation: robust accuracy is the clean accuracy), then every budget with a value."""
    xs: list[float] = []
    ys: list[float] = []
    if ev.clean is not None and (not ev.eps or ev.eps[0] > 0):
        xs.append(0.0)
        ys.append(ev.clean)
    for e, v in zip(ev.eps, ev.robust, strict=True):
        if v is not None:
            xs.append(e)
            ys.append(v)
    return xs, ys


def _worst_curve(evals: Sequence[Evaluated]) -> tuple[list[float], list[float]]:
    grid = sorted({e for ev in evals for e in ev.eps})
    cleans = [ev.clean for ev in evals if ev.clean is not None]
    xs: list[float] = []
    ys: list[float] = []
    if cleans and (not grid or grid[0] > 0):
        xs.append(0.0)
        ys.append(min(cleans))
    for e in grid:
        v, _ = worst_case(evals, e)
        if v is not None:
            xs.append(e)
            ys.append(v)
    return xs, ys


def curves_png(dataset: str, norm: str, evals: Sequence[Evaluated], *, dpi: int = 90) -> bytes:
    """One figure for a (dataset, norm): a panel per model with a line per suite/attack (and the worst case
    over them), and, when there are several models, a panel per suite/attack with a line per model (so that
    defenses compare). Unreliable evaluations (a self-check failed) are dashed and marked in the legend."""
    from matplotlib.figure import Figure

    models = sorted({e.model for e in evals})
    names = sorted({e.name for e in evals})
    panels: list[tuple[str, list[tuple[str, Evaluated | None, list[Evaluated]]]]] = []
    if len(names) > 1 or len(models) == 1:
        for m in models:
            mine = [e for e in evals if e.model == m]
            lines: list[tuple[str, Evaluated | None, list[Evaluated]]] = [(e.name, e, [e]) for e in mine]
            if len({e.name for e in mine}) > 1:
                lines.append(("worst case", None, mine))
            panels.append((f"model: {m}", lines))
    if len(models) > 1:
        for n in names:
            panels.append((n, [(e.model, e, [e]) for e in evals if e.name == n]))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.5 * nrows + 0.5), dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, (title, lines) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for i, (label, ev, group) in enumerate(lines):
            if ev is None:
                xs, ys = _worst_curve(group)
                ax.plot(xs, ys, color=_WORST_COLOR, linestyle=":", linewidth=2.0, label=label)
                continue
            xs, ys = _curve(ev)
            unreliable = ev.reliable is False
            text = _short(label + (" (unreliable)" if unreliable else ""), 60)
            ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], markersize=4, linewidth=1.5,
                    linestyle="--" if unreliable else "-", label=text)
        ax.set_title(_short(title, 48), fontsize=9)
        ax.set_xlabel(f"eps ({norm})", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(_short(f"robust accuracy vs budget: {dataset}, {norm}", 90), fontsize=10)
    fig.tight_layout()
    return _png(fig, dpi)


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with ``$`` escaped (matplotlib reads ``$...$`` as math)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return mpl_text(text)


def mpl_text(text: str) -> str:
    """``text`` safe as a matplotlib label: ``$`` escaped, so that a name never parses as math."""
    return str(text).replace("$", r"\$")


def heatmap_png(metrics: dict[str, Any], *, dpi: int = 90) -> bytes | None:
    """A transfer matrix's heatmap from its metrics (:meth:`TransferMatrix.to_dict`), drawn by
    :func:`advlab.report.heatmap.save_heatmap`; ``None`` when the metrics hold no matrix."""
    from advlab.report.heatmap import save_heatmap

    names = metrics.get("names")
    rates = metrics.get("rates")
    if not isinstance(names, list) or not isinstance(rates, list) or not names or len(rates) != len(names):
        return None
    rows: list[list[float] | None] = []
    for row in rates:
        if row is None:
            rows.append(None)
        elif isinstance(row, list) and len(row) == len(names):
            rows.append([math.nan if not isinstance(v, (int, float)) or isinstance(v, bool) else float(v)
                         for v in row])
        else:
            return None
    eps = metrics.get("eps")
    eps_part = f", eps={eps:g}" if isinstance(eps, (int, float)) and not isinstance(eps, bool) else ""
    title = f"transfer rate ({metrics.get('norm', '?')}{eps_part}, n={metrics.get('n', '?')})"
    with tempfile.TemporaryDirectory(prefix="advlab-report-") as tmp:
        path = save_heatmap(rows, Path(tmp) / "heatmap.png", row_labels=[_short(str(n), 40) for n in names],
                            col_labels=[_short(str(n), 40) for n in names], title=mpl_text(title), dpi=dpi)
        return path.read_bytes()
