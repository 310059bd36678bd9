"""A self-contained HTML report of a results store: :func:`render_report` and :func:`write_report`.

One HTML file, readable offline in any browser without running a script: CSS inline, every image an
embedded base64 PNG (``data:`` URL), no link to anything outside the file. Its sections, each with a
stable ``id``:

* ``warnings``: every self-check that warned or failed, per record (what was seen, what it means, what to
  try), unreliable evaluations (the active test failed) first and flagged; or one line saying that all the
  self-checks passed.
* ``summary``: per model or defense, clean accuracy and the worst robust accuracy over its suites and attacks
  at each budget.
* ``curves``: robust accuracy vs budget, one figure per (dataset, norm): a line per suite/attack for each
  model, and a line per model for each suite/attack.
* ``table``: the attack x defense table. ``transfer``: transfer heatmaps. ``grids``: image grids (clean,
  perturbation, adversarial with predictions). ``cost``: passes, queries and seconds per record and per
  stage of each cascade. ``provenance``: versions, seeds, config hashes, timestamps, full configurations.
  ``blackbox`` and ``train`` appear when such records exist.

Every string that comes from the store is HTML-escaped. The same records give the same file, byte for byte
(nothing in it depends on the time it was written, unless ``generated_at`` is given).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from advlab.report._plots import curves_png, heatmap_png, is_png
from advlab.report._tables import (
    TABLE_NAMES,
    Report,
    Table,
    esc,
    fired_checks,
    format_value,
    report_tables,
    tables_of,
)
from advlab.store._record import Record

__all__ = ["SECTION_IDS", "Table", "load_records", "markdown_report", "render_report", "report_tables", "write_report"]

SECTION_IDS = ("warnings", "summary", "curves", "table", "transfer", "grids", "cost", "provenance")
DEFAULT_TITLE = "advlab robustness report"

_CSS = """
:root { --fail: #b00020; --warn: #9a6700; --ok: #1a7f37; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
  max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { margin: 1.2rem 0 0.4rem; font-size: 1.05rem; }
nav { margin: 0.6rem 0 1rem; font-size: 0.9rem; } nav a { margin-right: 0.9rem; }
.meta, .note { color: var(--muted); font-size: 0.9rem; }
table.data { border-collapse: collapse; margin: 0.4rem 0 1rem; font-size: 0.85rem; }
table.data caption { text-align: left; font-weight: 600; padding: 0.2rem 0; }
table.data th, table.data td { border: 1px solid var(--line); padding: 0.2rem 0.5rem; vertical-align: top; }
table.data th { background: #f6f8fa; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.unreliable td { background: #ffebe9; } tr.worst td { font-weight: 600; background: #f6f8fa; }
.scroll { overflow-x: auto; }
.alert { border: 2px solid var(--fail); background: #ffebe9; padding: 0.6rem 1rem; border-radius: 6px; }
.alert h3 { color: var(--fail); margin-top: 0.2rem; }
.allpass { border: 1px solid var(--ok); background: #dafbe1; padding: 0.5rem 1rem; border-radius: 6px; }
.record { border: 1px solid var(--line); border-radius: 6px; padding: 0.3rem 1rem 0.6rem; margin: 0.8rem 0; }
.record.fail { border: 2px solid var(--fail); }
.check { border-left: 4px solid var(--warn); padding: 0.1rem 0.8rem; margin: 0.6rem 0; }
.check.fail { border-left-color: var(--fail); }
.badge { display: inline-block; font-size: 0.75rem; font-weight: 700; padding: 0.05rem 0.45rem; border-radius: 4px;
  color: white; background: var(--warn); margin-right: 0.4rem; } .badge.fail { background: var(--fail); }
dl.check-body { display: grid; grid-template-columns: 9rem 1fr; gap: 0.2rem 0.8rem; margin: 0.3rem 0; }
dl.check-body dt { font-weight: 600; color: var(--muted); } dl.check-body dd { margin: 0; }
figure { margin: 0.6rem 0 1.2rem; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 0.85rem; color: var(--muted); }
details { margin: 0.3rem 0; } pre { background: #f6f8fa; padding: 0.5rem; overflow-x: auto; font-size: 0.8rem; }
code { font-size: 0.85rem; }
"""


# ------------------------------------------------------------------------------------------------ loading


def load_records(store: str | os.PathLike[str]) -> list[Record]:
    """Every record of the results store file ``store``, opened read-only (a store left with an interrupted
    write by a killed sweep is first recovered: SQLite rolls the unfinished transaction back).

    Raises:
        ValueError: the store holds no record (``advlab.store.StoreError``, a ``ValueError``, when the file
            is missing, not a store, or of a newer schema).
    """
    from advlab.store import ResultStore, StoreError

    def read() -> list[Record]:
        with ResultStore(store, readonly=True) as opened:
            return opened.records()

    try:
        records = read()
    except StoreError as err:
        if "interrupted write" not in str(err):
            raise
        # a sweep killed in the middle of a write left its journal: one read-write open rolls it back
        ResultStore(store, create=False).close()
        records = read()
    if not records:
        name = os.fspath(store)
        raise ValueError(f"the store {name} holds no records; run `advlab bench SPEC --store {name}` or "
                         f"`advlab demo` first")
    return records


def _records_of(source: str | os.PathLike[str] | Sequence[Record]) -> list[Record]:
    if isinstance(source, (str, os.PathLike)):
        return load_records(source)
    if not isinstance(source, Sequence):
        raise TypeError(f"a report is made from a store path or a list of records, got {type(source).__name__}")
    records = cast("list[Record]", list(source))
    if not records:
        raise ValueError("no records to report; give at least one record (run `advlab bench SPEC --store FILE` "
                         "or `advlab demo` first)")
    return records


# ------------------------------------------------------------------------------------------------ pieces


def _img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" alt="{esc(alt)}">'


def _figure(data: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(data, alt)}<figcaption>{esc(caption)}</figcaption></figure>"


def _section(sid: str, heading: str, body: list[str]) -> str:
    return f'<section id="{sid}">\n<h2>{esc(heading)}</h2>\n' + "\n".join(body) + "\n</section>"


def _table(table: Table, *, caption: str | None = None, row_classes: list[str] | None = None) -> str:
    if not table.rows:
        return '<p class="note">No rows.</p>'
    return f'<div class="scroll">{table.to_html(caption=caption, row_classes=row_classes)}</div>'


def _reliable_classes(table: Table) -> list[str]:
    if "reliable" not in table.columns:
        return ["" for _ in table.rows]
    j = table.columns.index("reliable")
    return ["unreliable" if row[j] is False else "" for row in table.rows]


def _group_heading(dataset: str, norm: str) -> str:
    return f"<h3>{esc(dataset)} · {esc(norm)}</h3>"


# ------------------------------------------------------------------------------------------------ sections


def _warnings(rep: Report) -> str:
    body: list[str] = []
    unreliable = [e for e in rep.evaluations if e.reliable is False]
    if unreliable:
        items = "".join(
            f"<li><strong>{esc(e.model)}</strong> on {esc(e.dataset)}: {esc(e.name)} ({esc(e.norm)})"
            + "".join(f" — {esc(c.get('name', '?'))}: {esc(c.get('message', ''))}"
                      for c in e.fired if c.get("status") == "fail") + "</li>"
            for e in unreliable)
        body.append(f'<div class="alert"><h3>Unreliable: {len(unreliable)} evaluation(s) cannot be trusted</h3>'
                    f"<p>A self-check failed (the active test: the suite could not find adversarial examples "
                    f"that provably exist inside the budget). Their robust accuracies are upper bounds that may "
                    f"be far too high.</p><ul>{items}</ul></div>")
    flagged = [r for r in rep.records if fired_checks(r)]
    flagged.sort(key=lambda r: not any(c.get("status") == "fail" for c in fired_checks(r)))
    for r in flagged:
        checks = fired_checks(r)
        failed = any(c.get("status") == "fail" for c in checks)
        parts = [f'<article class="record{" fail" if failed else ""}"><h3>{esc(rep.describe(r))}</h3>']
        for c in sorted(checks, key=lambda c: c.get("status") != "fail"):
            status = "fail" if c.get("status") == "fail" else "warn"
            rows = [("Seen", c.get("message")), ("What it means", c.get("meaning")), ("What to try", c.get("advice"))]
            if c.get("adaptive"):
                rows.append(("Adaptive option", f"adaptive={c['adaptive']!r}"))
            dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows if v not in (None, ""))
            parts.append(f'<div class="check {status}"><p><span class="badge {status}">{status.upper()}</span>'
                         f"<strong>{esc(c.get('name', '?'))}</strong></p><dl class=\"check-body\">{dl}</dl></div>")
        parts.append(f'<p class="note">record {esc(r.key[:12])}</p></article>')
        body.append("".join(parts))
    checks = [c for r in rep.records for c in r.checks if isinstance(c, dict)]
    passed = sum(c.get("status") == "pass" for c in checks)
    skipped = sum(c.get("status") == "skip" for c in checks)
    evaluated = sum(1 for r in rep.records if r.checks)
    if not flagged and not unreliable:
        if checks:
            skip = f"; {skipped} not applicable" if skipped else ""
            body.append(f'<p class="allpass">All {passed} self-checks passed, over {evaluated} record(s){skip}.</p>')
        else:
            body.append('<p class="note">No self-check was run on these records.</p>')
    else:
        n_fired = sum(len(fired_checks(r)) for r in rep.records)
        body.insert(0, f'<p class="note">{n_fired} of {len(checks)} self-checks warned or failed; {passed} '
                       f"passed, {skipped} not applicable.</p>")
    return _section("warnings", "Self-check warnings", body)


def _summary(rep: Report, tables: dict[str, Table]) -> str:
    body = ['<p class="note">The worst case over each model\'s suites and attacks at every budget (the lowest robust '
            "accuracy any of them left); a row in red holds an unreliable evaluation.</p>"]
    for dataset, norm in rep.groups():
        t = tables["summary"].where(dataset=dataset, norm=norm)
        body += [_group_heading(dataset, norm), _table(t, row_classes=_reliable_classes(t))]
    if not rep.groups():
        body.append('<p class="note">No robustness or attack records.</p>')
    return _section("summary", "Summary", body)


def _curves(rep: Report) -> str:
    body = ['<p class="note">Accuracy vs budget (at 0: the clean accuracy). Dashed: unreliable; dotted black: '
            "the worst case over a model's suites and attacks.</p>"]
    for dataset, norm in rep.groups():
        evals = rep.in_group(dataset, norm)
        png = curves_png(dataset, norm, evals)
        body.append(_figure(png, f"robustness curves, {dataset}, {norm}",
                            f"{dataset}, {norm}: {len(evals)} evaluation(s) of "
                            f"{len({e.model for e in evals})} model(s)"))
    if not rep.groups():
        body.append('<p class="note">No robustness or attack records.</p>')
    return _section("curves", "Robustness curves", body)


def _attack_table(rep: Report, tables: dict[str, Table]) -> str:
    body = ['<p class="note">Robust accuracy of each model or defense (columns) under each suite or attack (rows), at '
            "every budget.</p>"]
    for dataset, norm in rep.groups():
        t = tables["attack_defense"].where(dataset=dataset, norm=norm)
        j = t.columns.index("suite/attack")
        classes = ["worst" if row[j] in ("worst case", "clean") else "" for row in t.rows]
        body += [_group_heading(dataset, norm), _table(t, row_classes=classes)]
    if not rep.groups():
        body.append('<p class="note">No robustness or attack records.</p>')
    return _section("table", "Attack x defense", body)


def _transfer(rep: Report) -> str:
    body: list[str] = []
    for r in rep.of_kind("transfer"):
        m = r.metrics if isinstance(r.metrics, dict) else {}
        art = r.artifacts.get("heatmap.png")
        png = art if is_png(art) else heatmap_png(m)
        attacks: dict[str, Any] = m["attacks"] if isinstance(m.get("attacks"), dict) else {}
        used = sorted({str(a) for a in attacks.values() if a})
        caption = (f"{rep.describe(r)}; norm {m.get('norm', '?')}, eps {format_value(m.get('eps'))}, n "
                   f"{m.get('n', '?')}; attack(s): {', '.join(used) or '?'}")
        if png is None:
            body.append(f'<p class="note">{esc(caption)}: no heatmap (the record holds no matrix).</p>')
        else:
            body.append(_figure(bytes(png), f"transfer heatmap {r.key[:12]}", caption))
        only: dict[str, Any] = m["targets_only"] if isinstance(m.get("targets_only"), dict) else {}
        if only:
            body.append("<ul>" + "".join(f"<li>{esc(k)}: target only ({esc(v)})</li>" for k, v in only.items())
                        + "</ul>")
    if not body:
        body.append('<p class="note">No transfer records.</p>')
    return _section("transfer", "Transfer", body)


def _grids(rep: Report) -> str:
    body: list[str] = []
    for kind in ("robustness", "attack"):
        for r in rep.of_kind(kind):
            art = r.artifacts.get("grid.png")
            if art is None:
                continue
            if is_png(art):
                body.append(_figure(bytes(art), f"image grid {r.key[:12]}", f"{rep.describe(r)} (clean / "
                                    "perturbation / adversarial at the largest budget, with predictions)"))
            else:
                body.append(f'<p class="note">{esc(rep.describe(r))}: its grid.png is not a PNG image; not '
                            "shown.</p>")
    if not body:
        body.append('<p class="note">No image grids in these records.</p>')
    return _section("grids", "Image grids", body)


def _cost(tables: dict[str, Table]) -> str:
    body = ['<p class="note">Forward and backward passes and queries are summed over the points attacked; '
            "<em>total</em> rows are per record, the others per stage of a cascade (budget x attack).</p>",
            _table(tables["cost"])]
    return _section("cost", "Cost", body)


def _extra(sid: str, heading: str, table: Table) -> str:
    return _section(sid, heading, [_table(table)]) if table.rows else ""


def _provenance(rep: Report, tables: dict[str, Table]) -> str:
    body: list[str] = []
    version_sets = sorted({json.dumps(r.versions, sort_keys=True) for r in rep.records if r.versions})
    if len(version_sets) == 1:
        v = json.loads(version_sets[0])
        body.append("<p>Every record was computed with " + esc(", ".join(f"{k} {x}" for k, x in sorted(v.items())))
                    + ".</p>")
    elif version_sets:
        body.append(f'<p class="note">The records were computed with {len(version_sets)} different sets of library '
                    "versions (see the table).</p>")
    body.append(_table(tables["provenance"]))
    details = []
    for r in rep.records:
        config = json.dumps(r.config, indent=2, sort_keys=True, default=str)
        details.append(f"<details><summary>{esc(r.key[:12])}: {esc(rep.describe(r))}</summary>"
                       f"<pre>{esc(config)}</pre></details>")
    body.append("<h3>Configurations</h3>" + "".join(details))
    return _section("provenance", "Provenance", body)


def _header(rep: Report, title: str, generated_at: str | None) -> str:
    kinds: dict[str, int] = {}
    for r in rep.records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    stamps = sorted(s for r in rep.records for s in (r.started, r.finished) if s)
    span = f"; computed {stamps[0]} to {stamps[-1]}" if stamps else ""
    meta = f"{len(rep.records)} record(s): {counts}{span}."
    if generated_at:
        meta += f" Report generated {generated_at}."
    return f"<header><h1>{esc(title)}</h1><p class=\"meta\">{esc(meta)}</p></header>"


def _nav(sections: list[tuple[str, str]]) -> str:
    return "<nav>" + "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in sections) + "</nav>"


def render_report(records: Sequence[Record], *, title: str = DEFAULT_TITLE, generated_at: str | None = None) -> str:
    """The HTML report of ``records``: one self-contained page (inline CSS, images as base64 PNG, no script,
    no external link), sections ``warnings``, ``summary``, ``curves``, ``table``, ``transfer``, ``grids``,
    ``cost``, ``provenance`` (and ``blackbox`` / ``train`` when such records exist).

    Args:
        records: the records (:class:`~advlab.store.Record`; the report tolerates missing optional fields).
        title: the page's title.
        generated_at: a time stamp to print in the header (default: none, so the same records give the same
            page byte for byte).

    Returns:
        The HTML text.

    Raises:
        ValueError: no records. TypeError: an item is not a ``Record``.

    Example:
        >>> from advlab.store._record import Record
        >>> r = Record("k1", "attack", {"kind": "attack", "dataset": "digits", "model": {"name": "mlp"},
        ...            "norm": "linf"}, {"attack": "fgsm", "n": 4, "clean_accuracy": 1.0,
        ...            "results": [{"eps": 0.1, "robust_accuracy": 0.5}]})
        >>> page = render_report([r])
        >>> page.startswith("<!DOCTYPE html>"), 'id="curves"' in page, "50.0%" in page
        (True, True, True)
    """
    records = list(records)
    if not records:
        raise ValueError("no records to report; give at least one record")
    rep = Report.of(records)
    tables = tables_of(rep)
    sections = [
        ("warnings", "Warnings", _warnings(rep)),
        ("summary", "Summary", _summary(rep, tables)),
        ("curves", "Curves", _curves(rep)),
        ("table", "Attack x defense", _attack_table(rep, tables)),
        ("transfer", "Transfer", _transfer(rep)),
        ("blackbox", "Black-box", _extra("blackbox", "Black-box attacks", tables["blackbox"])),
        ("train", "Training", _extra("train", "Training", tables["train"])),
        ("grids", "Image grids", _grids(rep)),
        ("cost", "Cost", _cost(tables)),
        ("provenance", "Provenance", _provenance(rep, tables)),
    ]
    present = [(sid, name, text) for sid, name, text in sections if text]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        _header(rep, title, generated_at), _nav([(sid, name) for sid, name, _ in present]),
        *(text for _, _, text in present), "</body>", "</html>", "",
    ])


def markdown_report(records: Sequence[Record], *, title: str = DEFAULT_TITLE,
                    tables: dict[str, Table] | None = None) -> str:
    """The report's tables as one Markdown document (a heading and a table per non-empty table)."""
    tables = tables if tables is not None else report_tables(records)
    out = [f"# {title}", ""]
    for name in TABLE_NAMES:
        t = tables[name]
        if not t.rows and name not in ("summary", "warnings"):
            continue
        out += [f"## {t.title}", ""]
        if name == "warnings" and not t.rows:
            out += ["No self-check warned or failed.", ""]
            continue
        out += [t.to_markdown(), ""]
    return "\n".join(out)


def write_report(
    source: str | os.PathLike[str] | Sequence[Record],
    out: str | os.PathLike[str],
    *,
    csv_dir: str | os.PathLike[str] | None = None,
    markdown: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Writes the HTML report (:func:`render_report`) of a results store or of a list of records to ``out``,
    and optionally its tables as CSV files (``csv_dir/<name>.csv``, one per name of :func:`report_tables`)
    and as one Markdown file. Everything is rendered first, then every file is written atomically; without
    ``overwrite`` nothing is written when any of them exists.

    Args:
        source: a results store file (read-only) or a list of :class:`~advlab.store.Record`.
        out: the HTML file. csv_dir: a folder for the CSV tables (created). markdown: a Markdown file.
        overwrite: replace existing files (default: ``FileExistsError``, nothing written).
        title: the page's title.

    Returns:
        The path of the HTML report.

    Raises:
        ValueError: an empty store or list (``StoreError``, a ``ValueError``, for a missing store file or one
            of a newer schema); two outputs at one path. FileExistsError: an output exists.

    Example:
        >>> import os, tempfile
        >>> from advlab.store._record import Record
        >>> r = Record("k1", "attack", {"kind": "attack", "dataset": "digits", "model": {"name": "mlp"}},
        ...            {"attack": "fgsm", "results": [{"eps": 0.1, "robust_accuracy": 0.5}]})
        >>> folder = tempfile.mkdtemp()
        >>> write_report([r], os.path.join(folder, "r.html"), csv_dir=os.path.join(folder, "csv")).name
        'r.html'
        >>> sorted(os.listdir(os.path.join(folder, "csv")))[:2]
        ['attack_defense.csv', 'blackbox.csv']
    """
    from advlab.report.heatmap import write_atomically

    records = _records_of(source)
    tables = report_tables(records)
    files: list[tuple[Path, str]] = [(Path(out), render_report(records, title=title))]
    if markdown is not None:
        files.append((Path(markdown), markdown_report(records, title=title, tables=tables)))
    if csv_dir is not None:
        folder = Path(csv_dir)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{str(folder)!r} is a file; give a folder for the CSV tables")
        files += [(folder / f"{name}.csv", t.to_csv()) for name, t in tables.items()]
    seen: dict[str, Path] = {}
    for path, _ in files:
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"{str(path)!r} is named for two outputs of the report; give each its own path")
        seen[real] = path
        if path.is_dir():
            raise IsADirectoryError(f"{str(path)!r} is a folder; give a file path")
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it, or choose another path")
    for path, text in files:
        write_atomically(path, _text_writer(text), overwrite=overwrite)
    return Path(out)


def _text_writer(text: str) -> Callable[[Path], object]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")
