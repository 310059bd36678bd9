"""PGD-40 side by side with torchattacks: advlab's per-step overhead, in interleaved rounds.

The setting of the issue "per-step overhead of the engine": ``cnn-small`` trained one epoch on MNIST (the
model of ``benchmarks/attacks.py``, cached in the same work dir), the first 1,000 MNIST test images in
batches of 250, PGD L∞ ε = 0.1, 40 steps of 2.5·ε/40 from a random start, one restart. advlab runs as one
call over the 1,000 images (``batch_size=250``); torchattacks' ``PGD`` is called once per batch of 250. The
model is frozen for both (eval mode, ``requires_grad`` off on the parameters, the ``Classifier``'s per-call
input checks off), as in ``benchmarks/attacks.py``.

A round runs each library once, back to back, the order alternating from round to round; round ``r`` uses
seed ``seed + r`` for both (advlab: a ``torch.Generator``; torchattacks draws its random start from the
global generator, seeded with ``torch.manual_seed``). Reported per library: wall time of the call (best and
median over rounds; the process CPU time beside it, steadier on a shared machine), minor page faults during
the call (``getrusage``), robust accuracy (the fraction of the 1,000 images still classified correctly, judged
here by one forward pass over every library's output; advlab's own ``result.robust_accuracy`` is recorded
beside it), and the median over rounds of the ratio advlab / torchattacks of the two runs of a round.
torchattacks returns bare examples; the two forward passes its caller needs for verdicts (clean and
adversarial batch) are timed separately and reported as the ratio "with verdicts".

Modes (recorded as ``mode``):

- ``default``: the plain process, glibc malloc's defaults (what a user's ``python`` gets);
- ``--tuned``: the script re-runs itself with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set as
  ``benchmarks/attacks.py`` does (``common.STEADY_MALLOC``: freed memory stays in the process);
- ``--mallopt``: the plain process after ``advlab.keep_freed_memory()`` (the same two settings, by ``mallopt``).

Results go to ``benchmarks/results/pgd_overhead.json``, one entry per mode; an existing entry is kept unless
``--overwrite``.

Usage::

    python benchmarks/pgd_overhead.py                   # default process, 5 rounds (~4 min on 2 cores)
    python benchmarks/pgd_overhead.py --tuned           # malloc tuned as benchmarks/attacks.py tunes it
    python benchmarks/pgd_overhead.py --rounds 7 --threads 1 --out /tmp/pgd.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_WORK_DIR,
    REPO,
    STEADY_MALLOC,
    benchmark_model,
    ensure_steady_malloc,
    machine_info,
    version_of,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "pgd_overhead.json"
LIBRARIES = ("advlab", "torchattacks")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def run_advlab(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace, seed: int, steps: int
               ) -> tuple[Tensor, float]:
    import advlab.attacks

    result = advlab.attacks.pgd(model, x, y, eps=a.eps, steps=steps, step_size=2.5 * a.eps / steps,
                                batch_size=a.batch_size, generator=torch.Generator().manual_seed(seed))
    return result.x_adv[0], float(result.robust_accuracy[0])


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, a: argparse.Namespace, seed: int, steps: int
                     ) -> tuple[Tensor, float]:
    import torchattacks

    torch.manual_seed(seed)  # torchattacks draws its random start from the global generator
    attack = torchattacks.PGD(model, eps=a.eps, alpha=2.5 * a.eps / steps, steps=steps, random_start=True)
    return torch.cat([attack(x[s], y[s]) for s in batches(x.shape[0], a.batch_size)]), float("nan")


RUNNERS = {"advlab": run_advlab, "torchattacks": run_torchattacks}


def judge(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, eps: float, size: int) -> dict[str, Any]:
    """Robust accuracy by one forward pass per batch, and whether the output lies in the ball and bounds."""
    with torch.no_grad():
        pred = torch.cat([model(x_adv[s]).argmax(1) for s in batches(x.shape[0], size)])
    inside = bool(((x_adv - x).abs().amax() <= eps + 1e-6) & (x_adv.min() >= 0) & (x_adv.max() <= 1))
    return {"robust_accuracy": float((pred == y).float().mean()), "valid": inside}


def verdict_seconds(model: nn.Module, x: Tensor, x_adv: Tensor, size: int) -> float:
    """What a torchattacks caller spends to get verdicts: a forward pass at the clean and the adversarial batch."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in batches(x.shape[0], size):
            model(x[s]).argmax(1)
            model(x_adv[s]).argmax(1)
    return time.perf_counter() - t0


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lib in LIBRARIES:
        t = [r[lib]["seconds"] for r in rounds]
        out[lib] = {
            "best_seconds": min(t), "median_seconds": statistics.median(t),
            "median_minor_faults": statistics.median(r[lib]["minor_faults"] for r in rounds),
            "mean_robust_accuracy": statistics.mean(r[lib]["robust_accuracy"] for r in rounds),
            "robust_accuracy_per_round": [r[lib]["robust_accuracy"] for r in rounds],
        }
    ratios = [r["advlab"]["seconds"] / r["torchattacks"]["seconds"] for r in rounds]
    with_verdicts = [r["advlab"]["seconds"] / (r["torchattacks"]["seconds"] + r["torchattacks"]["verdict_seconds"])
                     for r in rounds]
    cpu = [r["advlab"]["cpu_seconds"] / r["torchattacks"]["cpu_seconds"] for r in rounds]
    out["ratio_per_round"] = ratios
    out["median_ratio"] = statistics.median(ratios)
    out["ratio_of_best"] = out["advlab"]["best_seconds"] / out["torchattacks"]["best_seconds"]
    out["median_ratio_with_verdicts"] = statistics.median(with_verdicts)
    out["median_cpu_ratio"] = statistics.median(cpu)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="Model cache (default: %(default)s).")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="Folder holding mnist/.")
    p.add_argument("--checkpoint", type=Path, default=None, help="Use this checkpoint instead of the cached model.")
    p.add_argument("--n", type=int, default=1000, help="First N MNIST test images.")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (>= 5 for the reported median).")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default).")
    p.add_argument("--seed", type=int, default=0, help="Round r uses seed + r for both libraries.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tuned", action="store_true",
                      help="Re-run with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ as benchmarks/attacks.py sets "
                           "them (common.STEADY_MALLOC).")
    mode.add_argument("--mallopt", action="store_true",
                      help="Call advlab.keep_freed_memory() first (the same settings, in process).")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--overwrite", action="store_true", help="Replace this mode's entry in --out if present.")
    a = p.parse_args(argv)
    if a.tuned and argv is None:
        ensure_steady_malloc(sys.argv)  # exec's itself with the variables set; returns once they are
    tuned_env = all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items())
    if a.tuned and not tuned_env:
        raise SystemExit("--tuned needs Linux (glibc malloc environment variables)")
    if not a.tuned and any(k in os.environ for k in STEADY_MALLOC):
        raise SystemExit(f"the environment sets {list(STEADY_MALLOC)}: unset them for the default process")
    mode_name = "tuned" if a.tuned else "mallopt" if a.mallopt else "default"

    settings = {"n": a.n, "batch_size": a.batch_size, "eps": a.eps, "norm": "linf", "steps": a.steps,
                "step_size": 2.5 * a.eps / a.steps, "random_start": True, "restarts": 1}
    report: dict[str, Any] = json.loads(a.out.read_text()) if a.out.exists() else {}
    if report.get("settings", settings) != settings:
        raise SystemExit(f"{a.out} holds runs of other settings ({report['settings']}); use another --out")
    if mode_name in report.get("runs", {}) and not a.overwrite:
        raise SystemExit(f"{a.out} already holds a {mode_name!r} run; pass --overwrite or another --out")

    import advlab
    from advlab.models import unchecked_inputs

    if a.mallopt and not advlab.keep_freed_memory():
        raise SystemExit("advlab.keep_freed_memory() is not supported here (glibc Linux only)")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    Path(a.work_dir).mkdir(parents=True, exist_ok=True)
    model: nn.Module
    if a.checkpoint is not None:
        model, ckpt = advlab.load_checkpoint(a.checkpoint), a.checkpoint
    else:
        model, ckpt = benchmark_model(Path(a.work_dir), Path(a.data_root), log=log)
    model = model.eval()
    for param in model.parameters():  # every library attacks a frozen model, as in benchmarks/attacks.py
        param.requires_grad_(False)
    x_all, y_all = advlab.load_dataset("mnist", "test", root=a.data_root)
    x, y = x_all[: a.n].contiguous(), y_all[: a.n].contiguous()

    rounds: list[dict[str, Any]] = []
    with unchecked_inputs(model):
        for lib in LIBRARIES:  # warm-up: kernels, allocator, imports
            RUNNERS[lib](model, x, y, a, a.seed, 2)
        for r in range(a.rounds):
            order = LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]
            row: dict[str, Any] = {"order": list(order), "seed": a.seed + r, "load_average": os.getloadavg()}
            for lib in order:
                f0, c0, t0 = minor_faults(), time.process_time(), time.perf_counter()
                x_adv, own_ra = RUNNERS[lib](model, x, y, a, a.seed + r, a.steps)
                seconds, cpu, faults = time.perf_counter() - t0, time.process_time() - c0, minor_faults() - f0
                cell = {"seconds": seconds, "cpu_seconds": cpu, "minor_faults": faults,
                        **judge(model, x, y, x_adv, a.eps, a.batch_size)}
                if lib == "advlab":
                    cell["own_robust_accuracy"] = own_ra
                else:
                    cell["verdict_seconds"] = verdict_seconds(model, x, x_adv, a.batch_size)
                row[lib] = cell
            rounds.append(row)
            log(f"round {r}: advlab {row['advlab']['seconds']:.2f} s ({row['advlab']['minor_faults']} faults, "
                f"robust acc {row['advlab']['robust_accuracy']:.3f}), torchattacks "
                f"{row['torchattacks']['seconds']:.2f} s ({row['torchattacks']['minor_faults']} faults, "
                f"robust acc {row['torchattacks']['robust_accuracy']:.3f}), ratio "
                f"{row['advlab']['seconds'] / row['torchattacks']['seconds']:.3f}")

    info = machine_info()
    info.update({"mode": mode_name, "threads": torch.get_num_threads(), "threads_arg": a.threads,
                 "torchattacks": version_of("torchattacks"), "advlab_path": str(Path(advlab.__file__).parent),
                 "checkpoint": str(ckpt), "time": time.strftime("%Y-%m-%d %H:%M:%S %z")})
    s = summarise(rounds)
    entry = {"machine": info, "summary": s, "rounds": rounds}
    report["settings"] = settings
    report.setdefault("runs", {})[mode_name] = entry
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"mode {mode_name}, {info['threads']} thread(s), {a.rounds} rounds, PGD-{a.steps} on {a.n} images")
    for lib in LIBRARIES:
        print(f"  {lib:13s} best {s[lib]['best_seconds']:.2f} s, median {s[lib]['median_seconds']:.2f} s, "
              f"median faults {s[lib]['median_minor_faults']:.0f}, robust acc (mean) "
              f"{100 * s[lib]['mean_robust_accuracy']:.2f} %")
    print(f"  advlab / torchattacks: median of rounds {s['median_ratio']:.3f} (per round "
          f"{', '.join(f'{v:.3f}' for v in s['ratio_per_round'])}), with verdicts "
          f"{s['median_ratio_with_verdicts']:.3f}, CPU time {s['median_cpu_ratio']:.3f}")
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
