"""Training benchmark: test accuracy and time per epoch of the model zoo with its default recipes.

Every row trains one model from scratch with ``advlab.train.train_model`` and the recipe of
``advlab.train.recipes`` (the same function as ``advlab train``, so the same seed gives the same model),
then measures the accuracy on the full test split and compares it with the row's target. Results go to a
JSON file (rows are merged into it, so ``--only`` runs update single rows) and a markdown table is printed.

Usage::

    python benchmarks/train_zoo.py                                   # all rows (tens of minutes on 2 cores)
    python benchmarks/train_zoo.py --only cnn-small/mnist --threads 1
    python benchmarks/train_zoo.py --only rbf --epochs 1             # a quick check of one model
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advlab.train import ProgressBar, get_recipe, train_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "train_zoo.json"


@dataclass(frozen=True)
class Row:
    """One benchmark row: a model on a dataset and its accuracy target (``max_epochs``/``max_seconds`` too)."""

    model: str
    data: str
    target: float
    max_epochs: int | None = None
    max_seconds: float | None = None
    extra: bool = False  # a row without a target of the issue, for reference

    @property
    def name(self) -> str:
        return f"{self.model}/{self.data}"


ROWS = (
    Row("cnn-small", "mnist", 0.990, max_epochs=3),
    Row("softmax", "mnist", 0.92),
    Row("maxout", "mnist", 0.985),
    Row("rbf", "mnist", 0.90),
    Row("cnn-small", "digits", 0.97, max_seconds=30.0),
    Row("resnet-tiny", "cifar10", 0.40),
    Row("lenet5", "mnist", 0.98, extra=True),
    Row("mlp", "mnist", 0.97, extra=True),
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def run_row(row: Row, *, data_root: Path, seed: int, device: torch.device, epochs: int | None,
            progress: bool) -> dict[str, Any]:
    """Trains and tests one row with :func:`advlab.train.train_model`; returns its record."""
    recipe = get_recipe(row.model, row.data, epochs=epochs)
    run = train_model(row.model, row.data, recipe, seed=seed, device=device, data_root=data_root,
                      callbacks=[ProgressBar()] if progress else [])
    history, summary = run.history, run.summary
    test_accuracy = summary["test_accuracy"]
    prepare_seconds = summary["prepare_seconds"]
    seconds = history.seconds + prepare_seconds
    met = test_accuracy >= row.target
    if row.max_epochs is not None:
        met = met and len(history.epochs) <= row.max_epochs
    if row.max_seconds is not None:
        met = met and seconds < row.max_seconds
    return {
        "name": row.name,
        "model": row.model,
        "data": row.data,
        "target": row.target,
        "max_epochs": row.max_epochs,
        "max_seconds": row.max_seconds,
        "extra": row.extra,
        "met": met,
        "test_accuracy": test_accuracy,
        "train_accuracy": history.train_accuracy,
        "n_train": summary["n_train"],
        "n_test": summary["n_test"],
        "epochs": len(history.epochs),
        "seconds": seconds,
        "prepare_seconds": prepare_seconds,
        "seconds_per_epoch": history.seconds_per_epoch,
        "epoch_seconds": [r.seconds for r in history.epochs],
        "epoch_loss": [r.loss for r in history.epochs],
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "recipe": recipe.to_dict(),
        "seed": seed,
        "device": str(device),
        "machine": machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table(records: list[dict[str, Any]]) -> str:
    """The markdown table of ``benchmarks/README.md``."""
    header = ["model", "data", "test acc.", "target", "met", "epochs", "s/epoch", "total s", "recipe"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in records:
        rc = r["recipe"]
        target = f">= {100 * r['target']:.1f}%" + (" (extra)" if r["extra"] else "")
        if r["max_epochs"]:
            target += f", <= {r['max_epochs']} ep."
        if r["max_seconds"]:
            target += f", < {r['max_seconds']:.0f} s"
        recipe = f"{rc['optimizer']} lr {rc['lr']:g}, bs {rc['batch_size']}, {rc['schedule'] or 'constant'}"
        if rc["weight_decay"]:
            recipe += f", wd {rc['weight_decay']:g}"
        lines.append("| " + " | ".join([
            r["model"], f"{r['data']} ({r['n_train']:,}/{r['n_test']:,})", f"{100 * r['test_accuracy']:.2f}%",
            target, "yes" if r["met"] else "**no**", str(r["epochs"]), f"{r['seconds_per_epoch']:.1f}",
            f"{r['seconds']:.0f}", recipe,
        ]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--only", action="append", default=[],
                        help="row to run: a model name or MODEL/DATA (repeatable; default: all rows)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file of results (rows merged in)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [r for r in ROWS if not args.only or r.model in args.only or r.name in args.only]
    if not rows:
        parser.error(f"--only matched no row; rows: {', '.join(r.name for r in ROWS)}")
    results: dict[str, Any] = {}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    for row in rows:
        print(f"{row.name}: training ...", file=sys.stderr, flush=True)
        record = run_row(row, data_root=args.data_root, seed=args.seed, device=torch.device(args.device),
                         epochs=args.epochs, progress=args.progress)
        print(f"{row.name}: test accuracy {record['test_accuracy']:.4f} in {record['epochs']} epochs, "
              f"{record['seconds_per_epoch']:.1f} s/epoch, target met: {record['met']}", file=sys.stderr,
              flush=True)
        results[row.name] = record
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    order = [r.name for r in ROWS]
    print(table([results[n] for n in order if n in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
