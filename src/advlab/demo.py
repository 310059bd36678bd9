"""The main job end to end: ``advlab demo``.

:func:`run_demo` runs a built-in benchmark spec (:data:`DEMO_SPECS`) through the sweep machinery into a
results store, renders the HTML report from it and returns a summary:

1. trains a standard ``cnn-small`` and the same network adversarially trained (``fast-at``);
2. evaluates both with the worst-case ``standard`` suite (APGD-CE, targeted APGD-DLR, Square) over a grid of
   L∞ budgets, with the self-checks (and the active test) that catch gradient masking;
3. attacks the standard model as a black box (a substitute trained on its labels, Papernot et al. 2017) and
   measures how adversarial examples transfer between the models;
4. writes ``results.sqlite`` (the store; the checkpoints in ``results.work/``) and ``report.html``.

On the bundled digits (the default, no download) it takes a few minutes on a 2-core CPU; ``data="mnist"``
runs the same at full size (MNIST files under ``data_root``; much longer). Run again, it resumes: the cells
already in the store are not computed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DIGITS = """\
[sweep]
name = "demo-digits"
seed = 0
n = 300
split = "test"
batch_size = 256

[[dataset]]
name = "digits"

[[model]]
name = "standard"
architecture = "cnn-small"

[[model]]
name = "fast-at"
architecture = "cnn-small"
defense = "fast-at"
defense_eps = 0.1

[[evaluation]]
suite = "standard"
norm = "linf"
eps = [0.05, 0.1, 0.15, 0.2]
checks = true
active_test = true

[[evaluation]]
attack = "fgsm"
norm = "linf"
eps = [0.05, 0.1, 0.15, 0.2]

[[blackbox]]
model = "standard"
attack = "fgsm"
eps = 0.2
substitute = "mlp"
seed_size = 100
rounds = 4
epochs = 5

[[transfer]]
attack = "pgd"
eps = 0.1
"""

_MNIST = """\
[sweep]
name = "demo-mnist"
seed = 0
n = 1000
split = "test"
batch_size = 500

[[dataset]]
name = "mnist"

[[model]]
name = "standard"
architecture = "cnn-small"

[[model]]
name = "fast-at"
architecture = "cnn-small"
defense = "fast-at"
defense_eps = 0.3

[[evaluation]]
suite = "standard"
norm = "linf"
eps = [0.1, 0.2, 0.3]
checks = true
active_test = true

[[evaluation]]
attack = "fgsm"
norm = "linf"
eps = [0.1, 0.2, 0.3]

[[blackbox]]
model = "standard"
attack = "fgsm"
eps = 0.3
seed_size = 150
rounds = 6

[[transfer]]
attack = "pgd"
eps = 0.3
"""

DEMO_SPECS: dict[str, str] = {"digits": _DIGITS, "mnist": _MNIST}
"""The demo's benchmark spec (TOML, :mod:`advlab.sweep`) per dataset."""

STORE_NAME = "results.sqlite"
REPORT_NAME = "report.html"


@dataclass
class DemoResult:
    """What :func:`run_demo` did and where its files are.

    Attributes:
        out: the demo's folder. store / report: the results store and the HTML report in it.
        sweep: the sweep's :class:`~advlab.sweep.SweepSummary` (cells done before, run now, failed).
        summary: the report's worst-case summary table (:class:`~advlab.report.Table`).
        warnings: the self-checks that warned or failed, as ``(model, check, message)``.
        blackbox: the black-box records' metrics.
    """

    out: Path
    store: Path
    report: Path
    sweep: Any
    summary: Any
    warnings: list[tuple[str, str, str]] = field(default_factory=list)
    blackbox: list[dict[str, Any]] = field(default_factory=list)


def check_demo_folder(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Checks, before any work, that the demo may write into ``out``: a folder (or nothing yet) whose report
    is not there already (unless ``overwrite``). A store already in it is resumed, never replaced."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{os.fspath(path)!r} is a file; give --out a folder for the demo's store and report")
    report = path / REPORT_NAME
    if report.exists() and not overwrite:
        raise ValueError(
            f"{os.fspath(report)!r} already exists (an earlier demo); open it, or pass --overwrite to rebuild the "
            f"report (the results in {STORE_NAME} are kept and nothing finished is recomputed), or choose another "
            f"--out")
    return path


def run_demo(
    out: str | os.PathLike[str] = "advlab-demo",
    *,
    data: str = "digits",
    data_root: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> DemoResult:
    """Runs the demo's sweep into ``out/results.sqlite`` and writes ``out/report.html``.

    Args:
        out: the demo's folder (created). data: ``"digits"`` (bundled, default) or ``"mnist"``.
        data_root: folder of the dataset files (MNIST). device: where the cells compute.
        workers: cells run at once (local processes). progress: a progress bar over the cells.
        overwrite: rebuild ``report.html`` if it exists (the store is always resumed, never replaced).

    Returns:
        A :class:`DemoResult`.

    Raises:
        ValueError: an unknown ``data``, or ``out`` not usable (checked before any work); a cell failed.
        FileNotFoundError: the dataset's files are missing (checked before any work).
    """
    from advlab.data import dataset_files
    from advlab.report import load_records, report_tables, write_report
    from advlab.store import ResultStore
    from advlab.sweep import parse_spec, run_sweep

    if data not in DEMO_SPECS:
        raise ValueError(f"the demo runs on {', '.join(DEMO_SPECS)}; got --data {data!r}")
    folder = check_demo_folder(out, overwrite=overwrite)
    for split in ("train", "test"):  # the data is there (a one-line error naming the files, before any work)
        dataset_files(data, split, data_root)
    spec = parse_spec(DEMO_SPECS[data], file=f"<demo {data}>", base=folder)
    folder.mkdir(parents=True, exist_ok=True)
    store_path = folder / STORE_NAME
    with ResultStore(store_path) as store:
        sweep = run_sweep(spec, store, workers=workers, progress=progress, device=device, data_root=data_root)
    if not sweep.ok:  # each failure was printed as it happened
        raise ValueError(f"{sweep.text()}; the finished cells are kept in {os.fspath(store_path)}: run the same "
                         f"command again to retry the others")
    records = load_records(store_path)
    report = write_report(records, folder / REPORT_NAME, overwrite=True)
    tables = report_tables(records)
    warnings = [(str(row.get("model", "")), str(row.get("check", "")), str(row.get("seen") or ""))
                for row in tables["warnings"].records()]
    blackbox = [r.metrics for r in records if r.kind == "blackbox"]
    return DemoResult(out=folder, store=store_path, report=report, sweep=sweep, summary=tables["summary"],
                      warnings=warnings, blackbox=blackbox)
