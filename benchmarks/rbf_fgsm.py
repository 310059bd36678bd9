"""RBF networks against FGSM: error rate and confidence on the errors (Goodfellow, Shlens & Szegedy 2015, Sec. 7).

The paper reports that a shallow RBF network misclassifies many FGSM examples on MNIST (55.4 % at eps 0.25) but
with low confidence on its mistakes (1.2 % on average), where a maxout network errs confidently. This script
trains ``rbf``, ``cnn-small`` and ``maxout`` on MNIST with ``advlab.train.train_model`` and their default
recipes (or loads them from the cache in ``--work-dir``), runs
:func:`advlab.defenses.fgsm_error_confidence` on the test images at each budget and prints a markdown table;
the JSON record goes to ``benchmarks/results/rbf_fgsm.json`` (an existing file is kept unless ``--overwrite``).

Usage::

    python benchmarks/rbf_fgsm.py                        # ~10 min on 2 CPU cores, most of it maxout's 20 epochs
    python benchmarks/rbf_fgsm.py --maxout-epochs 5      # a shorter maxout run
    python benchmarks/rbf_fgsm.py --quick --n 200        # smoke test: 2,000 training images, one epoch each
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA_ROOT, DEFAULT_WORK_DIR, REPO, machine_info, markdown_table

MODELS = ("rbf", "cnn-small", "maxout")
DEFAULT_EPS = "0.05,0.1,0.2,0.25,0.3"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "rbf_fgsm.json"
QUICK_N_TRAIN = 2_000


def trained_model(name: str, *, epochs: int | None, n_train: int | None, data_root: Path, work_dir: Path,
                  seed: int, threads: int | None, log: Any = print) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``name`` trained on MNIST with its default recipe (``epochs`` overriding), cached in ``work_dir``."""
    from advlab.models import load_checkpoint
    from advlab.train import get_recipe, save_run, train_model

    recipe = get_recipe(name, "mnist", epochs=epochs)
    path = work_dir / f"rbf_fgsm-mnist-{name}-{recipe.epochs}ep-n{n_train or 'all'}-seed{seed}"
    info: dict[str, Any] = {"model": name, "recipe": recipe.to_dict(), "n_train": n_train, "seed": seed,
                            "checkpoint": str(path)}
    if (path / "model.json").exists():
        log(f"{name}: loading {path}")
        meta = json.loads((path / "model.json").read_text())
        info.update(cached=True, test_accuracy=meta.get("metrics", {}).get("test_accuracy"))
        return load_checkpoint(path), info
    log(f"{name}: training {recipe.epochs} epoch(s) on {n_train or 'all'} MNIST images; cached in {path}")
    run = train_model(name, "mnist", recipe, seed=seed, data_root=data_root, n_train=n_train, threads=threads)
    save_run(run, path)
    info.update(cached=False, test_accuracy=run.summary["test_accuracy"], seconds=run.summary["seconds"])
    log(f"{name}: test accuracy {run.summary['test_accuracy']:.4f} after {run.summary['seconds']:.0f} s")
    return run.model, info


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Writes ``record`` to ``path`` atomically (a temporary file in the same folder renamed over it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render(record: dict[str, Any]) -> str:
    """The markdown table of a record."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    rows = []
    for entry in record["models"]:
        for r in entry["rows"]:
            rows.append([entry["model"], f"{r['eps']:g}", pct(r["error_rate"]), pct(r["confidence_errors"]),
                         pct(r["confidence_correct"]), pct(r["confidence_clean"])])
    header = ["model", "eps", "FGSM error", "confidence on errors", "on correct", "on clean"]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="Folder holding mnist/.")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="Cache of the trained models.")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)}; with --quick, in --work-dir).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma list of zoo models.")
    parser.add_argument("--eps", default=DEFAULT_EPS, help="Comma list of L∞ budgets.")
    parser.add_argument("--n", type=int, default=10_000, help="Test images (the first N).")
    parser.add_argument("--maxout-epochs", type=int, default=None, help="Epochs of maxout (default its recipe's 20).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Smoke test: {QUICK_N_TRAIN} training images and one epoch per model.")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import advlab
    from advlab.defenses import fgsm_error_confidence

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(advlab.list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(advlab.list_models())}")
    try:
        budgets = [float(e) for e in args.eps.split(",")]
    except ValueError:
        parser.error(f"--eps must be a comma list of numbers, got {args.eps!r}")
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    out = args.out or (args.work_dir / "rbf_fgsm-quick.json" if args.quick else DEFAULT_OUT)
    if out.exists() and not args.overwrite:
        parser.error(f"{out} exists; pass --overwrite to replace it or --out for another file")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        parser.error(f"cannot write to {out.parent}; choose a writable --out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    x, y = advlab.load_dataset("mnist", "test", root=args.data_root)
    x, y = x[: args.n], y[: args.n]
    record: dict[str, Any] = {"benchmark": "rbf_fgsm", "machine": machine_info(), "dataset": "mnist",
                              "n_test": len(x), "eps": budgets, "quick": args.quick, "models": []}
    for name in models:
        epochs = 1 if args.quick else (args.maxout_epochs if name == "maxout" else None)
        model, info = trained_model(name, epochs=epochs, n_train=QUICK_N_TRAIN if args.quick else None,
                                    data_root=args.data_root, work_dir=args.work_dir, seed=args.seed,
                                    threads=args.threads, log=lambda s: print(s, file=sys.stderr))
        t0 = time.perf_counter()
        rows = fgsm_error_confidence(model, x, y, eps=budgets, batch_size=args.batch_size)
        record["models"].append({**info, "fgsm_seconds": time.perf_counter() - t0, "rows": rows})
    write_json(out, record)
    print(render(record))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
