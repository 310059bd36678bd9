"""Benchmark sweeps: a TOML spec (datasets x models x evaluations) expanded into cells, each a pure function
from its config to a :class:`~advlab.store.Record`, run on local processes or Ray and kept in a results store.

- :func:`load_spec` reads and checks a spec (format: :mod:`advlab.sweep._spec`, example
  ``examples/bench-digits.toml``); a mistake is a :class:`SpecError` naming the file, the line and the field.
- :meth:`Spec.cells` expands it into :class:`Cell` objects: train cells (dataset x model to train) and
  evaluation cells (dataset x model x evaluation), black-box and transfer cells; each with its full
  ``config``, its ``key`` (:func:`advlab.store.config_hash` of the config) and the train cells it needs.
- :func:`run_cell` computes one cell's record from its config (deterministic: same config, same
  :meth:`~advlab.store.Record.identity`).
- :func:`run_sweep` computes the cells missing from a store (never one already there), train cells first,
  writing each record as it finishes; ``advlab bench SPEC --store FILE`` runs it from the command line.

Example::

    from advlab.store import ResultStore
    from advlab.sweep import load_spec, run_sweep

    spec = load_spec("examples/bench-digits.toml")
    with ResultStore("bench.sqlite") as store:
        summary = run_sweep(spec, store, workers=2)
    print(summary.text())
"""

from __future__ import annotations

from advlab.sweep._cells import Cell, checkpoint_dir, expand, run_cell
from advlab.sweep._executors import EXECUTORS, RAY_INSTALL, SweepSummary, default_workdir, run_sweep
from advlab.sweep._spec import (
    BlackboxEntry,
    EvaluationEntry,
    ModelEntry,
    Spec,
    SpecError,
    SweepSettings,
    TransferEntry,
    load_spec,
    parse_spec,
)

__all__ = [
    "EXECUTORS",
    "RAY_INSTALL",
    "BlackboxEntry",
    "Cell",
    "EvaluationEntry",
    "ModelEntry",
    "Spec",
    "SpecError",
    "SweepSettings",
    "SweepSummary",
    "TransferEntry",
    "checkpoint_dir",
    "default_workdir",
    "expand",
    "load_spec",
    "parse_spec",
    "run_cell",
    "run_sweep",
]
