"""Worst-case robustness evaluation on MNIST: advlab's ``standard`` suite side by side with torchattacks'
``AutoAttack`` (standard version: APGD-CE, APGD-T over 9 target classes, FAB-T, Square with 5,000 queries) on
the same first ``--n`` test images, at L∞ eps 0.3, on two ``cnn-small`` models: undefended (1 epoch, the
benchmarks' cached model) and adversarially trained (``advlab train --model cnn-small --data mnist --defense
fast-at --eps 0.3 --seed 0``, cached in the benchmarks' work folder).

Parts (``--part``, repeatable; results merge into ``benchmarks/results/robustness.json``):

- ``autoattack``: torchattacks' ``AutoAttack(norm="Linf", eps=0.3, version="standard", n_classes=10, seed=0)`` on
  all ``--n`` points at once; robust accuracy re-checked on the model (inside the ball), wall time.
- ``advlab``: ``advlab.evaluate.robustness(model, x, y, norm="linf", eps=0.3, suite="standard")`` without the
  self-checks (what is compared with AutoAttack), then the self-checks alone (timed apart); robust accuracy,
  wall time, passes per stage.
- ``singles``: every attack of the standard suite run alone on all ``--n`` points (a one-attack suite each), to
  show the cascade is no weaker than any of its attacks.
- ``grid``: the standard suite over the grid 0.1, 0.2, 0.3 from one run.

Both libraries run in the default process (no thread or allocator settings), one after the other.

    python benchmarks/robustness.py --part autoattack --part advlab --part singles
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import advlab
from advlab.models import load_checkpoint
from common import DEFAULT_DATA_ROOT, DEFAULT_WORK_DIR, REPO, benchmark_model, machine_info, markdown_table, version_of

RESULTS = REPO / "benchmarks" / "results" / "robustness.json"
EPS = 0.3
FAST_AT = "mnist-cnn-small-fast-at-0.3-seed0"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def models(work_dir: Path, data_root: Path) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    out["cnn-small"], _ = benchmark_model(work_dir, data_root, log=log)
    path = work_dir / FAST_AT
    if not (path / "model.json").exists():
        raise SystemExit(f"no adversarially trained model at {path}; train it with: advlab train --model cnn-small "
                         f"--data mnist --defense fast-at --eps 0.3 --seed 0 --out {path}")
    out["fast-at"] = load_checkpoint(path)
    for m in out.values():
        m.eval()
    return out


def robust_accuracy(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> float:
    """Accuracy on ``x_adv``, where an ``x_adv`` outside the ball or the bounds counts as broken (never happens)."""
    with torch.no_grad():
        pred = torch.cat([model(x_adv[i : i + 500]).argmax(1) for i in range(0, len(x_adv), 500)])
    inside = ((x_adv - x).flatten(1).abs().amax(1) <= EPS + 1e-6) & (x_adv >= 0).flatten(1).all(1) & (
        x_adv <= 1).flatten(1).all(1)
    return float(((pred == y) | ~inside).double().mean())


def part_autoattack(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0)
    t0 = time.perf_counter()
    x_adv = attack(x, y)
    seconds = time.perf_counter() - t0
    return {"library": "torchattacks", "attack": "AutoAttack (standard)", "seconds": round(seconds, 1),
            "robust_accuracy": robust_accuracy(model, x, x_adv, y)}


def part_advlab(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    from advlab.evaluate import robustness, run_checks

    t0 = time.perf_counter()
    ev = robustness(model, x, y, norm="linf", eps=EPS, suite="standard", generator=torch.Generator().manual_seed(0),
                    checks=False)
    seconds = time.perf_counter() - t0
    rechecked = robust_accuracy(model, x, ev.x_adv[0], y)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks, found = run_checks(model, x, y, ev, generator=torch.Generator().manual_seed(1))
    check_seconds = time.perf_counter() - t1
    return {"library": "advlab", "attack": "robustness(suite='standard')", "seconds": round(seconds, 1),
            "robust_accuracy": ev.robust_accuracy[0], "rechecked_robust_accuracy": rechecked,
            "stages": [s.to_dict() for s in ev.stages], "suite": ev.config.get("suite"),
            "checks_seconds": round(check_seconds, 1), "checks": [c.to_dict() for c in checks],
            "found_by_checks": sum(int(f.index.numel()) for f in found)}


def part_singles(model: nn.Module, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    from advlab.evaluate import Suite, get_suite, robustness

    rows = []
    for stage in get_suite("standard").attacks:
        t0 = time.perf_counter()
        ev = robustness(model, x, y, norm="linf", eps=EPS, suite=Suite(name=stage.name, attacks=(stage,)),
                        generator=torch.Generator().manual_seed(0), checks=False)
        rows.append({"library": "advlab", "attack": stage.name, "seconds": round(time.perf_counter() - t0, 1),
                     "robust_accuracy": ev.robust_accuracy[0]})
        log(f"single {stage.name}: {rows[-1]}")
    return rows


def part_grid(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    from advlab.evaluate import robustness

    t0 = time.perf_counter()
    ev = robustness(model, x, y, norm="linf", eps=[0.1, 0.2, 0.3], suite="standard",
                    generator=torch.Generator().manual_seed(0), checks=False)
    return {"eps": ev.eps, "robust_accuracy": ev.robust_accuracy, "seconds": round(time.perf_counter() - t0, 1),
            "stages": [s.to_dict() for s in ev.stages]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", choices=["autoattack", "advlab", "singles", "grid"], required=True)
    parser.add_argument("--model", action="append", choices=["cnn-small", "fast-at"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    x_all, y_all = advlab.load_dataset("mnist", "test", root=args.data_root)
    x, y = x_all[: args.n], y_all[: args.n]
    for name, model in models(args.work_dir, args.data_root).items():
        if args.model and name not in args.model:
            continue
        entry = results.setdefault(name, {})
        with torch.no_grad():
            entry["clean_accuracy"] = float((model(x).argmax(1) == y).double().mean())
        for part in args.part:
            log(f"{name}: {part} on {args.n} points")
            out = {"autoattack": part_autoattack, "advlab": part_advlab, "singles": part_singles,
                   "grid": part_grid}[part](model, x, y)
            entry[part] = out
            log(f"{name}: {part}: {json.dumps(out)[:400]}")
            results["machine"] = machine_info()
            results["versions"] = {"advlab": advlab.__version__, "torchattacks": version_of("torchattacks")}
            results["n"] = args.n
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    rows = []
    for name in ("cnn-small", "fast-at"):
        entry = results.get(name, {})
        for part in ("autoattack", "advlab"):
            if part in entry:
                r = entry[part]
                rows.append([name, r["attack"], f"{r['robust_accuracy']:.1%}", f"{r['seconds']:.1f}"])
    print(markdown_table(["model", "evaluation", "robust accuracy", "wall s"], rows))


if __name__ == "__main__":
    main()
