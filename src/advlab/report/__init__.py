"""Reports: plots (matplotlib, rendered off-screen) of attacks and evaluations.

Example:
    >>> from advlab.report import save_attack_grid
"""

from __future__ import annotations

from advlab.report.grid import pick_examples, save_attack_grid, save_record_grid
from advlab.report.heatmap import save_heatmap, write_atomically

__all__ = ["pick_examples", "save_attack_grid", "save_heatmap", "save_record_grid", "write_atomically"]
