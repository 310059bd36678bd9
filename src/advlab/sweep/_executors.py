"""Running a sweep: :func:`run_sweep` computes the cells missing from a results store, on local processes or
on Ray, and writes each record as it finishes.

Only the main process writes to the store, one record per transaction, as soon as its cell finishes: a
sweep killed at any moment keeps every finished cell, and a restart computes only the missing ones (a cell
whose record is in the store is never computed again). Train cells run before the cells that read their
checkpoints; a cell whose train cell failed is skipped.

Executors. ``"local"``: a :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes started
with ``spawn`` (also for one worker: no cell runs in the main process, which only schedules and writes).
``"ray"``: Ray tasks (``pip install 'advlab[ray]'``), one CPU each, on the Ray instance named by
``RAY_ADDRESS`` or started on this machine with ``ray start``, else on a local one started with
``num_cpus=workers`` (and shut down after). Either way at most ``workers`` cells run at once. Both call
:func:`~advlab.sweep.run_cell`, which sets torch's threads to the cell's ``threads`` for its duration, so the
records are the same (:meth:`~advlab.store.Record.identity`) whichever executor ran them.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advlab.sweep._cells import Cell, run_cell

if TYPE_CHECKING:
    from advlab.store import Record, ResultStore
    from advlab.sweep._spec import Spec

__all__ = ["EXECUTORS", "RAY_INSTALL", "SweepSummary", "default_workdir", "run_sweep"]

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'advlab[ray]'"


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did.

    Attributes:
        name: the sweep's name. total: its cells. before: cells whose records were already in the store
            (not computed). run: cells computed and stored now. failed: cells that raised (not stored).
        skipped: cells not run because a train cell they need failed. failures: ``(label, message)`` of each
            failed cell. keys_run: the keys of the cells computed now. seconds: wall time.
        store / workdir: where the records and the checkpoints are.
    """

    name: str
    total: int
    before: int
    run: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    keys_run: list[str] = field(default_factory=list)
    seconds: float = 0.0
    store: str = ""
    workdir: str = ""

    @property
    def ok(self) -> bool:
        """Whether every cell is in the store now."""
        return self.before + self.run == self.total

    def text(self) -> str:
        """One line, e.g. ``bench digits: 6 cells: 2 done before, 4 run now, 0 failed (12.3 s)``."""
        skipped = f", {self.skipped} skipped (a train cell they need failed)" if self.skipped else ""
        return (f"bench {self.name}: {self.total} cells: {self.before} done before, {self.run} run now, "
                f"{self.failed} failed{skipped} ({self.seconds:.1f} s)")


def default_workdir(store_path: str | os.PathLike[str]) -> Path:
    """The sweep's working folder beside its store: ``results.sqlite`` -> ``results.work/`` (checkpoints of the
    models it trains under ``checkpoints/``)."""
    p = Path(store_path)
    return p.with_name(f"{p.stem}.work")


class _Executor:
    """Runs cells somewhere; ``wait`` returns the finished ones as ``(cell, record or exception)``."""

    def submit(self, cell: Cell) -> None:
        raise NotImplementedError

    def wait(self) -> list[tuple[Cell, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _call(config: dict[str, Any], workdir: str, checkpoints: dict[str, str], data_root: str | None) -> Record:
    return run_cell(config, workdir=workdir, checkpoints=checkpoints, data_root=data_root)


class _LocalExecutor(_Executor):
    def __init__(self, workers: int, workdir: Path, data_root: str | None) -> None:
        self.pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        self.workdir, self.data_root = str(workdir), data_root
        self.running: dict[cf.Future[Record], Cell] = {}

    def submit(self, cell: Cell) -> None:
        future = self.pool.submit(_call, cell.config, self.workdir, dict(cell.checkpoints), self.data_root)
        self.running[future] = cell

    def wait(self) -> list[tuple[Cell, Any]]:
        done, _ = cf.wait(list(self.running), return_when=cf.FIRST_COMPLETED)
        out = []
        for future in done:
            cell = self.running.pop(future)
            err = future.exception()
            out.append((cell, err if err is not None else future.result()))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"the ray executor needs Ray, which is not installed; {RAY_INSTALL}") from None
    return ray


class _RayExecutor(_Executor):
    def __init__(self, workers: int, workdir: Path, data_root: str | None) -> None:
        ray = _import_ray()
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
            else:
                try:  # a Ray instance started on this machine with `ray start`
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:  # none: a local one for this sweep
                    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
            self.started = True
        self.task = ray.remote(num_cpus=1, max_retries=0)(_call)
        self.workdir, self.data_root = str(workdir), data_root
        self.running: dict[Any, Cell] = {}

    def submit(self, cell: Cell) -> None:
        ref = self.task.remote(cell.config, self.workdir, dict(cell.checkpoints), self.data_root)
        self.running[ref] = cell

    def wait(self) -> list[tuple[Cell, Any]]:
        ready, _ = self.ray.wait(list(self.running), num_returns=1)
        out = []
        for ref in ready:
            cell = self.running.pop(ref)
            try:
                out.append((cell, self.ray.get(ref)))
            except Exception as err:  # a RayTaskError wraps the cell's own exception
                cause = getattr(err, "cause", None)
                out.append((cell, cause if isinstance(cause, BaseException) else err))
        return out

    def close(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()
        if self.started:
            self.ray.shutdown()


def _make_executor(executor: str, workers: int, workdir: Path, data_root: str | None) -> _Executor:
    if executor == "local":
        return _LocalExecutor(workers, workdir, data_root)
    return _RayExecutor(workers, workdir, data_root)


def _message(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_sweep(
    spec: Spec,
    store: ResultStore | str | os.PathLike[str],
    *,
    executor: str = "local",
    workers: int = 1,
    progress: bool = True,
    device: str = "cpu",
    seed: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> SweepSummary:
    """Computes the cells of ``spec`` missing from ``store`` and writes each record as it finishes.

    Cells whose key is in the store are never computed again; train cells run before the cells that need
    their checkpoints (a cell whose train cell fails is skipped). Only this process writes to the store. A
    cell that raises is counted in ``failed`` with its message (the others go on).

    Args:
        spec: the benchmark spec (:func:`~advlab.sweep.load_spec`).
        store: a :class:`~advlab.store.ResultStore` or the path of its file (created when missing).
        executor: ``"local"`` (processes, default) or ``"ray"`` (``pip install 'advlab[ray]'``).
        workers: how many cells run at once (default 1).
        progress: a progress bar over the cells on stderr (tqdm).
        device: where the cells compute; part of every cell's config.
        seed: replaces the spec's ``[sweep] seed`` when given.
        workdir: the folder for the checkpoints of the models the sweep trains (default
            :func:`default_workdir` of the store's file).
        data_root: folder of the dataset files.

    Returns:
        A :class:`SweepSummary`.

    Raises:
        ValueError: an unknown executor or a bad ``workers``. ImportError: ``executor="ray"`` without Ray.
    """
    from advlab.store import ResultStore

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "ray":
        _import_ray()
    owned = not isinstance(store, ResultStore)
    db = ResultStore(store) if not isinstance(store, ResultStore) else store
    try:
        return _run(spec, db, executor, workers, progress, device, seed,
                    Path(workdir) if workdir is not None else default_workdir(db.path),
                    None if data_root is None else str(data_root))
    finally:
        if owned:
            db.close()


def _run(spec: Spec, store: ResultStore, executor: str, workers: int, progress: bool, device: str,
         seed: int | None, workdir: Path, data_root: str | None) -> SweepSummary:
    from tqdm import tqdm

    t0 = time.perf_counter()
    cells = spec.cells(device=device, seed=seed)
    stored = set(store.keys())
    done = {c.key for c in cells if c.key in stored}
    summary = SweepSummary(name=spec.sweep.name, total=len(cells), before=len(done), store=str(store.path),
                           workdir=str(workdir))
    pending = [c for c in cells if c.key not in done]
    if not pending:
        summary.seconds = time.perf_counter() - t0
        return summary
    workdir.mkdir(parents=True, exist_ok=True)
    failed: set[str] = set()
    bar = tqdm(total=len(cells), initial=len(done), desc=spec.sweep.name, unit="cell", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    runner = _make_executor(executor, workers, workdir.resolve(), data_root)
    in_flight = 0
    try:
        while pending or in_flight:
            still: list[Cell] = []
            for cell in pending:
                if any(d in failed for d in cell.dependencies):
                    summary.skipped += 1
                    failed.add(cell.key)
                    bar.update(1)
                elif in_flight < workers and all(d in done for d in cell.dependencies):
                    runner.submit(cell)
                    in_flight += 1
                else:
                    still.append(cell)
            pending = still
            if not in_flight:
                break
            for cell, result in runner.wait():
                in_flight -= 1
                bar.update(1)
                if isinstance(result, BaseException):
                    if isinstance(result, KeyboardInterrupt):
                        raise result
                    summary.failed += 1
                    failed.add(cell.key)
                    summary.failures.append((cell.label, _message(result)))
                    bar.write(f"advlab: cell failed: {cell.label}: {_message(result)}", file=sys.stderr)
                    continue
                _store(store, result)
                done.add(cell.key)
                summary.run += 1
                summary.keys_run.append(cell.key)
    finally:
        bar.close()
        runner.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _store(store: ResultStore, record: Record) -> None:
    if record.key not in store:  # written meanwhile by another sweep on the same store: keep the first
        store.put(record)

