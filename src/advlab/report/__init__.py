"""Reports: plots (matplotlib, rendered off-screen) of attacks and evaluations, and the self-contained HTML
report of a results store (:func:`write_report`) with its tables (:func:`report_tables`).

Example:
    >>> from advlab.report import save_attack_grid, write_report
"""

from __future__ import annotations

from advlab.report._tables import TABLE_NAMES, Table, report_tables
from advlab.report.grid import pick_examples, save_attack_grid, save_record_grid
from advlab.report.heatmap import save_heatmap, write_atomically
from advlab.report.html import SECTION_IDS, load_records, markdown_report, render_report, write_report

__all__ = [
    "SECTION_IDS",
    "TABLE_NAMES",
    "Table",
    "load_records",
    "markdown_report",
    "pick_examples",
    "render_report",
    "report_tables",
    "save_attack_grid",
    "save_heatmap",
    "save_record_grid",
    "write_atomically",
    "write_report",
]
