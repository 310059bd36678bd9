"""The tables of a report, computed from the store's records: :class:`Table` (CSV, Markdown and HTML) and
:func:`report_tables` (summary, attack x defense, robustness rows, cost, self-check warnings, transfer,
black-box, training, provenance).

The records are read tolerantly: an optional field that is missing leaves a blank cell, never an error.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from advlab.store._record import Record, canonical_json

# The tables every report has, in order (each exists, possibly without rows, so the files written are known
# before the work starts).
TABLE_NAMES = ("summary", "attack_defense", "robustness", "cost", "warnings", "transfer", "blackbox", "train",
               "provenance")
EVAL_KINDS = ("robustness", "attack")


@dataclass(frozen=True)
class Table:
    """A table of a report: named columns and rows of plain values (``str``, ``int``, ``float``, ``bool`` or
    ``None`` for a blank cell).

    Attributes:
        name: a short identifier (the CSV file's stem). title: what the table shows.
        columns: the column names. rows: the rows, each one value per column.
        percent: the columns whose numbers are fractions in ``[0, 1]`` (shown as percentages; CSV keeps the
            fraction).

    Example:
        >>> t = Table("acc", "Accuracy", ("model", "clean"), (("mlp", 0.875), ("cnn", None)),
        ...           frozenset({"clean"}))
        >>> print(t.to_csv(), end="")
        model,clean
        mlp,0.875
        cnn,
        >>> print(t.to_markdown(), end="")
        | model | clean |
        | --- | ---: |
        | mlp | 87.5% |
        | cnn | — |
    """

    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    percent: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} of table {self.name!r} has {len(row)} cells for {len(self.columns)} "
                                 "columns; give one value per column")

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``."""
        j = self.columns.index(name)
        return [row[j] for row in self.rows]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts, column name -> value."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def where(self, **equal: Any) -> Table:
        """The rows whose columns equal the given values, without those columns and without the columns left
        blank in every selected row (e.g. one dataset and norm of a report)."""
        index = [self.columns.index(k) for k in equal]
        rows = [row for row in self.rows if all(row[i] == v for i, v in zip(index, equal.values(), strict=True))]
        keep = [j for j, _ in enumerate(self.columns)
                if j not in index and any(row[j] is not None for row in rows)]
        return Table(self.name, self.title, tuple(self.columns[j] for j in keep),
                     tuple(tuple(row[j] for j in keep) for row in rows), self.percent)

    def text(self, column: str, value: Any) -> str:
        """``value`` of ``column`` as the report shows it (percentages, ``—`` for a blank)."""
        return format_value(value, percent=column in self.percent)

    def to_csv(self) -> str:
        """The table as CSV text (a header line; numbers as Python writes them, blank for ``None``)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_value(v) for v in row])
        return buf.getvalue()

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (numbers right-aligned)."""
        if not self.columns:
            return "(no rows)\n"
        numeric = [self._numeric(j) for j in range(len(self.columns))]
        lines = ["| " + " | ".join(_md(c) for c in self.columns) + " |",
                 "| " + " | ".join("---:" if num else "---" for num in numeric) + " |"]
        for row in self.rows:
            lines.append("| " + " | ".join(_md(self.text(c, v)) for c, v in zip(self.columns, row, strict=True))
                         + " |")
        if not self.rows:
            lines.append("| " + " | ".join("" for _ in self.columns) + " |")
        return "\n".join(lines) + "\n"

    def to_html(self, *, row_classes: Sequence[str] | None = None, caption: str | None = None) -> str:
        """The table as an HTML ``<table>`` (every value escaped); ``row_classes``: a CSS class per row."""
        numeric = [self._numeric(j) for j in range(len(self.columns))]
        out = ['<table class="data">']
        if caption:
            out.append(f"<caption>{esc(caption)}</caption>")
        out.append("<thead><tr>" + "".join(f'<th class="{"num" if num else "txt"}">{esc(c)}</th>'
                                            for c, num in zip(self.columns, numeric, strict=True)) + "</tr></thead>")
        out.append("<tbody>")
        for i, row in enumerate(self.rows):
            cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
            cells = "".join(f'<td class="{"num" if num else "txt"}">{esc(self.text(c, v))}</td>'
                            for c, v, num in zip(self.columns, row, numeric, strict=True))
            out.append(f"<tr{cls}>{cells}</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

    def _numeric(self, j: int) -> bool:
        values = [row[j] for row in self.rows if row[j] is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def format_value(value: Any, *, percent: bool = False) -> str:
    """A cell as the report shows it: fractions as percentages (one decimal), other floats with 4
    significant digits, booleans as yes/no, ``None`` as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.1%}" if percent else f"{value:.4g}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def eps_text(eps: float) -> str:
    """A budget as a column name: ``eps=0.1``."""
    return f"eps={eps:g}"


# ------------------------------------------------------------------------------------------ reading records


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def eps_key(value: float) -> float:
    """A budget rounded to 10 significant digits, so that ``0.1`` from two records is one column."""
    return float(f"{float(value):.10g}")


def dataset_of(record: Record) -> str:
    """The dataset a record was computed on (``?`` when not recorded)."""
    data = _dict(record.config).get("dataset")
    if isinstance(data, dict):
        data = data.get("name")
    return str(data) if data not in (None, "") else "?"


def _model_name(model: Any) -> str:
    if isinstance(model, dict):
        name = model.get("name") or model.get("model") or model.get("checkpoint") or "model"
        defense = model.get("defense")
        if isinstance(defense, dict):
            defense = defense.get("name") or defense.get("kind")
        if defense in (None, "", "none") or str(defense) in str(name):
            return str(name)
        return f"{name} + {defense}"
    return "model" if model in (None, "") else str(model)


def model_labels(records: Iterable[Record]) -> dict[str, str]:
    """Record key -> the label of its model (``name`` or ``name + defense``); two different models with the
    same label are told apart by a short hash of their configuration."""
    by_label: dict[str, set[str]] = {}
    canon: dict[str, tuple[str, str]] = {}
    for r in records:
        model = _dict(r.config).get("model")
        label = _model_name(model)
        if isinstance(model, dict):  # the sweep's link to the cell that trained it is not part of the model
            model = {k: v for k, v in model.items() if k != "train_key"}
        try:
            text = canonical_json(model)
        except (TypeError, ValueError):
            text = repr(model)
        canon[r.key] = (label, text)
        by_label.setdefault(label, set()).add(text)
    out = {}
    for key, (label, text) in canon.items():
        if len(by_label[label]) > 1:
            import hashlib

            label = f"{label} #{hashlib.sha256(text.encode()).hexdigest()[:6]}"
        out[key] = label
    return out


@dataclass(frozen=True)
class Evaluated:
    """One robustness or attack record, read into the numbers the report shows.

    Attributes:
        record: the record. model: its model's label. dataset. name: ``suite NAME`` or the attack's name.
        norm. n: points evaluated. eps: budgets, ascending. robust: robust accuracy per budget (``None``
        where not recorded). clean: clean accuracy. reliable: ``False`` when a self-check failed (or the
        evaluation says so), ``True`` when checks ran and none failed, ``None`` when no check ran.
        fired: the checks that warn or fail (dicts as stored).
    """

    record: Record
    model: str
    dataset: str
    name: str
    norm: str
    n: int | None
    eps: tuple[float, ...]
    robust: tuple[float | None, ...]
    clean: float | None
    reliable: bool | None
    fired: tuple[dict[str, Any], ...]

    def at(self, eps: float) -> float | None:
        """Robust accuracy at budget ``eps`` (``None`` when not evaluated there)."""
        key = eps_key(eps)
        for e, v in zip(self.eps, self.robust, strict=True):
            if e == key:
                return v
        return None


def fired_checks(record: Record) -> list[dict[str, Any]]:
    """The record's checks that warn or fail."""
    return [c for c in record.checks if isinstance(c, dict) and c.get("status") in ("warn", "fail")]


def read_evaluation(record: Record, model: str) -> Evaluated | None:
    """A robustness or attack record as :class:`Evaluated` (``None`` for other kinds)."""
    cfg, m = _dict(record.config), _dict(record.metrics)
    mcfg = _dict(m.get("config"))
    if record.kind == "robustness":
        suite = m.get("suite", cfg.get("suite"))
        name = f"suite {suite if suite not in (None, '') else '?'}"
        eps_list = _list(m.get("eps")) or _list(cfg.get("eps"))
        robust = _list(m.get("robust_accuracy"))
        pairs = [(_num(e), _num(robust[i]) if i < len(robust) else None) for i, e in enumerate(eps_list)]
        n = _int(m.get("n", cfg.get("n")))
        flag = m.get("reliable")
    elif record.kind == "attack":
        attack = m.get("attack", cfg.get("attack"))
        name = str(attack if attack not in (None, "") else "?")
        if m.get("targeted") is True or mcfg.get("targeted") is True:
            name += " (targeted)"
        rows = [_dict(r) for r in _list(m.get("results"))]
        pairs = [(_num(r.get("eps")), _num(r.get("robust_accuracy"))) for r in rows]
        n = _int(m.get("n", cfg.get("n")))
        flag = None
    else:
        return None
    norm = m.get("norm") or mcfg.get("norm") or cfg.get("norm") or "?"
    merged: dict[float, float | None] = {}
    for e, v in pairs:
        if e is not None:
            merged[eps_key(e)] = v
    eps = tuple(sorted(merged))
    fired = tuple(fired_checks(record))
    failed = any(c.get("status") == "fail" for c in fired) or flag is False
    ran = bool(record.checks) or isinstance(flag, bool)
    reliable = False if failed else (True if ran else None)
    return Evaluated(record=record, model=model, dataset=dataset_of(record), name=name, norm=str(norm), n=n,
                     eps=eps, robust=tuple(merged[e] for e in eps), clean=_num(m.get("clean_accuracy")),
                     reliable=reliable, fired=fired)


@dataclass(frozen=True)
class Report:
    """Every record of a report, read once: the model labels, the evaluations (sorted) and the records of
    each kind (sorted by dataset, model, key)."""

    records: tuple[Record, ...]
    labels: dict[str, str]
    evaluations: tuple[Evaluated, ...]

    @classmethod
    def of(cls, records: Sequence[Record]) -> Report:
        for r in records:
            if not isinstance(r, Record):
                raise TypeError(f"a report is made of advlab.store.Record objects, got {type(r).__name__}")
        labels = model_labels(records)
        ordered = sorted(records, key=lambda r: (r.kind, dataset_of(r), labels[r.key], r.key))
        evals = [e for r in ordered if (e := read_evaluation(r, labels[r.key])) is not None]
        evals.sort(key=lambda e: (e.dataset, e.norm, e.model, e.name, e.record.key))
        return cls(tuple(ordered), labels, tuple(evals))

    def of_kind(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.kind == kind]

    def groups(self) -> list[tuple[str, str]]:
        """The (dataset, norm) pairs that have evaluations, sorted."""
        return sorted({(e.dataset, e.norm) for e in self.evaluations})

    def in_group(self, dataset: str, norm: str) -> list[Evaluated]:
        return [e for e in self.evaluations if e.dataset == dataset and e.norm == norm]

    def describe(self, record: Record) -> str:
        """One line naming a record: model, dataset and what was run."""
        cfg = _dict(record.config)
        ev = next((e for e in self.evaluations if e.record is record), None)
        what = f"{ev.name} ({ev.norm})" if ev is not None else record.kind
        if ev is None and record.kind in ("transfer", "blackbox"):
            what = f"{record.kind} {cfg.get('attack', '')}".strip()
        return f"{self.labels[record.key]} on {dataset_of(record)}: {what}"


def eps_grid(evals: Iterable[Evaluated]) -> list[float]:
    """Every budget of the evaluations, ascending."""
    return sorted({e for ev in evals for e in ev.eps})


def worst_case(evals: Sequence[Evaluated], eps: float) -> tuple[float | None, str | None]:
    """The lowest robust accuracy at ``eps`` over the evaluations, and the evaluation that reached it."""
    best: tuple[float | None, str | None] = (None, None)
    for ev in evals:
        v = ev.at(eps)
        if v is not None and (best[0] is None or v < best[0]):
            best = (v, ev.name)
    return best


def _clean(evals: Sequence[Evaluated]) -> float | None:
    values = [e.clean for e in evals if e.clean is not None]
    return min(values) if values else None


def _n_text(evals: Sequence[Evaluated]) -> int | str | None:
    ns = sorted({e.n for e in evals if e.n is not None})
    if not ns:
        return None
    return ns[0] if len(ns) == 1 else "/".join(str(n) for n in ns)


def _reliable(evals: Sequence[Evaluated]) -> bool | None:
    flags = [e.reliable for e in evals]
    if any(f is False for f in flags):
        return False
    return True if any(f is True for f in flags) else None


# ------------------------------------------------------------------------------------------------ tables


def summary_table(rep: Report) -> Table:
    """Per (dataset, norm, model): clean accuracy and, at every budget, the worst robust accuracy over the
    model's suites and attacks."""
    grid = eps_grid(rep.evaluations)
    cols = ("dataset", "norm", "model", "n", "clean accuracy", *(eps_text(e) for e in grid), "evaluations",
            "reliable")
    rows = []
    for dataset, norm in rep.groups():
        evals = rep.in_group(dataset, norm)
        for model in sorted({e.model for e in evals}):
            mine = [e for e in evals if e.model == model]
            rows.append((dataset, norm, model, _n_text(mine), _clean(mine),
                         *(worst_case(mine, e)[0] for e in grid), len(mine), _reliable(mine)))
    return Table("summary", "Worst case per model: clean accuracy and the lowest robust accuracy over its "
                 "suites and attacks at each budget", cols, tuple(rows),
                 frozenset({"clean accuracy", *(eps_text(e) for e in grid)}))


def attack_defense_table(rep: Report) -> Table:
    """Rows: suite or attack (one per budget, with a clean row and a worst-case row); columns: models."""
    models = sorted({e.model for e in rep.evaluations})
    cols = ("dataset", "norm", "suite/attack", "eps", *models)
    rows: list[tuple[Any, ...]] = []
    for dataset, norm in rep.groups():
        evals = rep.in_group(dataset, norm)
        by_model = {m: [e for e in evals if e.model == m] for m in models}
        rows.append((dataset, norm, "clean", None, *(_clean(by_model[m]) if by_model[m] else None
                                                     for m in models)))
        grid = eps_grid(evals)
        for name in sorted({e.name for e in evals}):
            for eps in grid:
                cells = [worst_case([e for e in by_model[m] if e.name == name], eps)[0] for m in models]
                if any(c is not None for c in cells):
                    rows.append((dataset, norm, name, eps, *cells))
        if len({e.name for e in evals}) > 1:
            for eps in grid:
                rows.append((dataset, norm, "worst case", eps, *(worst_case(by_model[m], eps)[0] for m in models)))
    return Table("attack_defense", "Robust accuracy: suite or attack (rows) x model or defense (columns)", cols,
                 tuple(rows), frozenset(models))


def robustness_table(rep: Report) -> Table:
    """One row per evaluation and budget."""
    cols = ("model", "dataset", "suite/attack", "norm", "eps", "n", "clean accuracy", "robust accuracy",
            "reliable", "record")
    rows = [(e.model, e.dataset, e.name, e.norm, eps, e.n, e.clean, v, e.reliable, e.record.key)
            for e in rep.evaluations for eps, v in zip(e.eps, e.robust, strict=True)]
    return Table("robustness", "Every evaluation at every budget", cols, tuple(rows),
                 frozenset({"clean accuracy", "robust accuracy"}))


def cost_table(rep: Report) -> Table:
    """Per record its total cost; per stage of a robustness cascade (budget x attack) its own."""
    cols = ("record", "kind", "dataset", "model", "what", "stage", "eps", "attacked", "broken", "forward passes",
            "backward passes", "queries", "pass budget", "seconds")
    rows: list[tuple[Any, ...]] = []
    names = {e.record.key: e.name for e in rep.evaluations}
    for r in rep.records:
        cost, m = _dict(r.cost), _dict(r.metrics)
        what = names.get(r.key, r.kind)

        def total(key: str, cost: dict[str, Any] = cost, m: dict[str, Any] = m) -> Any:
            v = cost.get(key, m.get(key))
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        seconds = total("seconds")
        if isinstance(_dict(m).get("seconds"), dict) and seconds is None:  # black-box: {"total": ...}
            seconds = _num(m["seconds"].get("total"))
        rows.append((r.key[:12], r.kind, dataset_of(r), rep.labels[r.key], what, "total", None, _int(m.get("n")),
                     None, total("n_forward"), total("n_backward"), total("n_queries"), None, seconds))
        if r.kind == "robustness":
            for s in (_dict(s) for s in _list(m.get("stages"))):
                rows.append((r.key[:12], r.kind, dataset_of(r), rep.labels[r.key], what, str(s.get("attack", "?")),
                             _num(s.get("eps")), _int(s.get("n_attacked")), _int(s.get("n_broken")),
                             _int(s.get("n_forward")), _int(s.get("n_backward")), _int(s.get("n_queries")),
                             _int(s.get("pass_budget")), _num(s.get("seconds"))))
    return Table("cost", "Cost per record (total) and per stage of each cascade (budget x attack): passes summed "
                 "over the points attacked", cols, tuple(rows))


def warnings_table(rep: Report) -> Table:
    """Every self-check that warned or failed, per record."""
    cols = ("model", "dataset", "evaluation", "check", "status", "seen", "meaning", "advice", "adaptive", "record")
    rows = []
    names = {e.record.key: f"{e.name} ({e.norm})" for e in rep.evaluations}
    for r in sorted(rep.records, key=lambda r: (not any(c.get("status") == "fail" for c in fired_checks(r)),
                                                dataset_of(r), rep.labels[r.key], r.key)):
        for c in fired_checks(r):
            rows.append((rep.labels[r.key], dataset_of(r), names.get(r.key, r.kind), str(c.get("name", "?")),
                         str(c.get("status")), _text(c.get("message")), _text(c.get("meaning")),
                         _text(c.get("advice")), _text(c.get("adaptive")), r.key[:12]))
    return Table("warnings", "Self-checks that warned or failed", cols, tuple(rows))


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def transfer_table(rep: Report) -> Table:
    """Every transfer rate: source x target per transfer record."""
    cols = ("dataset", "norm", "eps", "source", "attack", "target", "rate", "record")
    rows = []
    for r in rep.of_kind("transfer"):
        m = _dict(r.metrics)
        names = [str(n) for n in _list(m.get("names"))]
        attacks = _dict(m.get("attacks"))
        for i, row in enumerate(_list(m.get("rates"))):
            if i >= len(names) or not isinstance(row, list):
                continue
            for j, v in enumerate(row[: len(names)]):
                rows.append((dataset_of(r), m.get("norm"), _num(m.get("eps")), names[i],
                             _text(attacks.get(names[i])), names[j], _num(v), r.key[:12]))
    return Table("transfer", "Transfer rates (source: where the examples were crafted; diagonal: white-box)", cols,
                 tuple(rows), frozenset({"rate"}))


def blackbox_table(rep: Report) -> Table:
    """One row per black-box (substitute) record."""
    cols = ("model", "dataset", "attack", "norm", "eps", "n", "oracle clean accuracy", "oracle misclassification",
            "substitute accuracy", "substitute success", "queries", "attack queries", "record")
    rows = []
    for r in rep.of_kind("blackbox"):
        m = _dict(r.metrics)
        rows.append((rep.labels[r.key], dataset_of(r), _text(m.get("attack")), _text(m.get("norm")),
                     _num(m.get("eps")), _int(m.get("n")), _num(m.get("oracle_clean_accuracy")),
                     _num(m.get("oracle_misclassification")), _num(m.get("substitute_accuracy")),
                     _num(m.get("substitute_success")), _int(m.get("queries")), _int(m.get("attack_queries")),
                     r.key[:12]))
    return Table("blackbox", "Black-box attacks through a substitute", cols, tuple(rows),
                 frozenset({"oracle clean accuracy", "oracle misclassification", "substitute accuracy",
                            "substitute success"}))


def train_table(rep: Report) -> Table:
    """One row per training record."""
    cols = ("model", "dataset", "defense", "epochs", "clean accuracy", "checkpoint", "record")
    rows = []
    for r in rep.of_kind("train"):
        m = _dict(r.metrics)
        defense = m.get("defense")
        if isinstance(defense, dict):
            defense = defense.get("name")
        rows.append((rep.labels[r.key], dataset_of(r), _text(defense), _int(m.get("epochs")),
                     _num(m.get("clean_accuracy")), _text(m.get("checkpoint")), r.key[:12]))
    return Table("train", "Models trained", cols, tuple(rows), frozenset({"clean accuracy"}))


def provenance_table(rep: Report) -> Table:
    """Per record: what, with which seeds and versions, on which weights, when."""
    cols = ("record", "kind", "model", "dataset", "seeds", "config hash", "model hash", "versions", "started",
            "finished")
    rows = []
    for r in rep.records:
        versions = ", ".join(f"{k} {v}" for k, v in sorted(_dict(r.versions).items()))
        seeds = json.dumps(r.seeds, sort_keys=True) if r.seeds else None
        rows.append((r.key[:12], r.kind, rep.labels[r.key], dataset_of(r), seeds, r.key, r.model_hash,
                     versions or None, r.started or None, r.finished or None))
    return Table("provenance", "Provenance of every record", cols, tuple(rows))


def tables_of(rep: Report) -> dict[str, Table]:
    """Every table of :data:`TABLE_NAMES` for the records read into ``rep``."""
    out = {
        "summary": summary_table(rep), "attack_defense": attack_defense_table(rep),
        "robustness": robustness_table(rep), "cost": cost_table(rep), "warnings": warnings_table(rep),
        "transfer": transfer_table(rep), "blackbox": blackbox_table(rep), "train": train_table(rep),
        "provenance": provenance_table(rep),
    }
    assert tuple(out) == TABLE_NAMES
    return out


def report_tables(records: Sequence[Record]) -> dict[str, Table]:
    """The tables of a report on ``records``, by name (every name of ``TABLE_NAMES``, in that order).

    * ``summary``: per (dataset, norm, model) the clean accuracy and, at each budget, the worst robust
      accuracy over its suites and attacks (the lowest; an empty cell where no evaluation used that budget),
      how many evaluations and whether all are reliable.
    * ``attack_defense``: rows suite or attack x budget (plus ``clean`` and ``worst case`` rows), one column
      per model or defense, robust accuracy in the cells.
    * ``robustness``: one row per evaluation and budget: model, dataset, suite/attack, norm, eps, n, clean and
      robust accuracy, reliable (``False``: a self-check failed; blank: none ran).
    * ``cost``: per record its total forward/backward passes, queries and seconds, and per stage of each
      robustness cascade (budget x attack) the points attacked and broken and its passes.
    * ``warnings``: every self-check that warned or failed: what was seen, what it means, what to try.
    * ``transfer``, ``blackbox``, ``train``: the rates and figures of those records.
    * ``provenance``: seeds, config hash, model hash, versions, timestamps of every record.

    Args:
        records: the records (:class:`~advlab.store.Record`), e.g. ``ResultStore(path).records()``.

    Returns:
        name -> :class:`Table` (a table without rows when no record feeds it).

    Example:
        >>> from advlab.store._record import Record
        >>> r = Record("k1", "attack", {"kind": "attack", "dataset": "digits", "model": {"name": "mlp"}},
        ...            {"attack": "fgsm", "n": 4, "clean_accuracy": 1.0,
        ...             "results": [{"eps": 0.1, "robust_accuracy": 0.5}]})
        >>> report_tables([r])["summary"].records()[0]["eps=0.1"]
        0.5
    """
    return tables_of(Report.of(list(records)))
