"""Black-box attacks on MNIST (undefended ``cnn-small``): advlab's score- and decision-based attacks side by side
with the Adversarial Robustness Toolbox and torchattacks.

Parts (``--part``, repeatable; results merge into ``benchmarks/results/blackbox_scores.json``):

- ``square``: advlab ``square`` against ART's ``SquareAttack`` and torchattacks' ``Square`` at L∞ eps 0.3 on the
  first ``--n`` test images the model classifies correctly, with the same per-example query limit
  (``--max-queries``) and the same ``p_init``. Success rate (re-checked on the model, inside the ball), queries
  per example (advlab: exact, per example, from its oracle; the peers: every model evaluation they make,
  counted by a wrapper, divided by the number of examples), wall time.
- ``hsja``: advlab ``hsja`` (all examples batched) against ART's ``HopSkipJump`` (one example at a time) at L2
  on the first ``--n-hsja`` of those images: ART runs first, its model evaluations per example are counted,
  and advlab gets that many queries per example (``max_queries``); median L2 distance and wall time. Both
  evaluate the model in batches of at most 128 rows (ART's ``batch_size``, advlab's ``oracle.EVAL_CHUNK``).
- ``others``: advlab ``nes``, ``spsa`` (L∞ 0.3) and ``simba`` (L2 ``--eps-l2``) on the first ``--n-others``
  images: success rate and queries per example (informative).

Query accounting of the peers. ART's ``SquareAttack(max_iter=T)`` runs ``T`` iterations; each queries the
examples still robust once, and ART re-predicts the whole batch at every iteration to find them, so its model
evaluations exceed the attacker's queries. torchattacks' ``Square(n_queries=Q)`` (the original authors' code)
counts one query for the start and one per iteration per example still running, like advlab. The wrapper
counts every row the model evaluates, which is what each run costs.

    flock /tmp/advlab-heavy.lock python benchmarks/blackbox_scores.py --part square --part hsja --part others
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import advlab
from advlab.attacks import RobustnessWarning
from common import DEFAULT_DATA_ROOT, DEFAULT_WORK_DIR, REPO, benchmark_model, machine_info, markdown_table, version_of

RESULTS = REPO / "benchmarks" / "results" / "blackbox_scores.json"
EPS_LINF = 0.3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Counting(nn.Module):
    """The model, counting the rows it evaluates (every query a peer makes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        out: Tensor = self.model(x.float())  # ART's HopSkipJump hands float64 arrays to a float32 model
        return out


def points(model: nn.Module, data_root: Path, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST test images the model classifies correctly."""
    x, y = advlab.load_dataset("mnist", "test", root=data_root)
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, 4000, 1000)])
    keep = (pred == y[:4000]).nonzero().squeeze(1)[:n]
    return x[keep], y[keep]


def verdict(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, norm: str, eps: float | None) -> dict[str, Any]:
    """Success re-checked on the model (inside the ball when ``eps`` is given) and the distances."""
    with torch.no_grad():
        pred = torch.cat([model(x_adv[i : i + 500]).argmax(1) for i in range(0, len(x_adv), 500)])
    dist = advlab.threat.lp_norm(x_adv - x, norm)
    ok = pred != y
    if eps is not None:
        ok &= dist <= eps * (1 + 1e-5) + 1e-6
    out = {"success_rate": float(ok.float().mean()), "n": len(x)}
    if bool(ok.any()):
        out["median_distance"] = float(dist[ok].median())
    return out


def query_stats(queries: Tensor, success: Tensor) -> dict[str, float]:
    q = queries.double()
    stats = {"mean_queries": float(q.mean()), "median_queries": float(q.median())}
    if bool(success.any()):
        stats["mean_queries_success"] = float(q[success].mean())
        stats["median_queries_success"] = float(q[success].median())
    return stats


def run_advlab(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, **kwargs: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        r = advlab.attacks.get_attack(name)(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0),
                                            **kwargs)
    seconds = time.perf_counter() - t0
    assert r.queries is not None
    out = {"library": "advlab", "attack": name, "seconds": round(seconds, 2), "params": kwargs, "eps": eps,
           **verdict(model, x, r.x_adv[0], y, r.norm, eps), **query_stats(r.queries[0], r.success[0]),
           "model_evaluations_per_example": r.n_forward / len(x)}
    log(f"advlab {name}: {json.dumps(out)}")
    return out


def part_square(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    q, p = args.max_queries, args.p_init
    rows = [run_advlab("square", model, x, y, EPS_LINF, max_queries=q, p_init=p)]
    import torchattacks

    n_peer = min(args.n_torchattacks, len(x))
    xp, yp = x[:n_peer], y[:n_peer]

    counting = Counting(model).eval()
    attack = torchattacks.Square(counting, norm="Linf", eps=EPS_LINF, n_queries=q, n_restarts=1, p_init=p,
                                 loss="margin", resc_schedule=True, seed=0, verbose=False)
    t0 = time.perf_counter()
    x_adv = attack(xp, yp)
    seconds = time.perf_counter() - t0
    out = {"library": "torchattacks", "attack": "Square", "seconds": round(seconds, 2),
           "params": {"n_queries": q, "p_init": p, "loss": "margin"}, **verdict(model, xp, x_adv, yp, "linf", EPS_LINF),
           "model_evaluations_per_example": counting.rows / n_peer}
    log(f"torchattacks Square: {json.dumps(out)}")
    rows.append(out)

    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    n_art = min(args.n_art, len(x))
    xp, yp = x[:n_art], y[:n_art]
    if n_art < len(x):  # advlab on the same (fewer) points, for a like-for-like row
        rows.append({**run_advlab("square", model, xp, yp, EPS_LINF, max_queries=q, p_init=p),
                     "note": f"ART's {n_art} points"})
    counting = Counting(model).eval()
    clf = PyTorchClassifier(model=counting, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    # max_iter iterations after the start: at most max_iter + 1 attacker queries per example, as advlab's q
    art = SquareAttack(clf, norm=np.inf, max_iter=q - 1, eps=EPS_LINF, p_init=p, nb_restarts=1, batch_size=n_art,
                       verbose=False)
    t0 = time.perf_counter()
    x_adv = torch.from_numpy(art.generate(xp.numpy(), y=yp.numpy()))
    seconds = time.perf_counter() - t0
    out = {"library": "ART", "attack": "SquareAttack", "seconds": round(seconds, 2),
           "params": {"max_iter": q - 1, "p_init": p}, **verdict(model, xp, x_adv, yp, "linf", EPS_LINF),
           "model_evaluations_per_example": counting.rows / n_art}
    log(f"ART SquareAttack: {json.dumps(out)}")
    rows.append(out)
    return {"eps": EPS_LINF, "norm": "linf", "max_queries": q, "p_init": p, "n": len(x),
            "n_torchattacks": min(args.n_torchattacks, len(x)), "n_art": n_art, "rows": rows}


def part_hsja(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    n = min(args.n_hsja, len(x))
    xh, yh = x[:n], y[:n]
    counting = Counting(model).eval()
    clf = PyTorchClassifier(model=counting, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    art = HopSkipJump(clf, targeted=False, norm=2, max_iter=args.hsja_iters, max_eval=10_000, init_eval=100,
                      init_size=100, batch_size=128, verbose=False)
    t0 = time.perf_counter()
    np.random.seed(0)  # ART draws from NumPy's global generator
    x_adv = torch.from_numpy(art.generate(xh.numpy(), y=yh.numpy()))
    seconds = time.perf_counter() - t0
    evaluations = counting.rows / n
    art_row = {"library": "ART", "attack": "HopSkipJump", "seconds": round(seconds, 2),
               "params": {"max_iter": args.hsja_iters, "max_eval": 10_000, "init_eval": 100, "init_size": 100,
                          "batch_size": 128},
               **verdict(model, xh, x_adv, yh, "l2", None), "model_evaluations_per_example": evaluations}
    log(f"ART HopSkipJump: {json.dumps(art_row)}")
    budget = math.ceil(evaluations)
    ours = run_advlab("hsja", model, xh, yh, 100.0, max_queries=budget)
    return {"norm": "l2", "n": n, "matched_max_queries": budget, "rows": [ours, art_row]}


def part_others(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    n = min(args.n_others, len(x))
    xo, yo = x[:n], y[:n]
    q = args.max_queries_others
    rows = [
        run_advlab("nes", model, xo, yo, EPS_LINF, max_queries=q),
        run_advlab("spsa", model, xo, yo, EPS_LINF, max_queries=q),
        run_advlab("simba", model, xo, yo, args.eps_l2, max_queries=q),
        run_advlab("simba", model, xo, yo, args.eps_l2, max_queries=q, basis="dct"),
    ]
    return {"n": n, "max_queries": q, "eps_linf": EPS_LINF, "eps_l2": args.eps_l2, "rows": rows}


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(results: dict[str, Any]) -> str:
    header = ["part", "library", "attack", "n", "success", "mean q (all)", "median q (all)", "mean q (succ.)",
              "median q (succ.)", "model evals / ex.", "median dist", "seconds"]
    rows = []
    for part in ("square", "hsja", "others"):
        for r in results.get(part, {}).get("rows", []):
            rows.append([part, r["library"], r["attack"] + (f" ({r['params'].get('basis')})" if "basis" in
                         r["params"] else ""), str(r["n"]), f"{r['success_rate']:.1%}", fmt(r.get("mean_queries")),
                         fmt(r.get("median_queries"), ".0f"), fmt(r.get("mean_queries_success")),
                         fmt(r.get("median_queries_success"), ".0f"), fmt(r.get("model_evaluations_per_example")),
                         fmt(r.get("median_distance"), ".3f"), fmt(r["seconds"], ".1f")])
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=["square", "hsja", "others"])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--n", type=int, default=1000, help="Correctly classified test images for square.")
    parser.add_argument("--n-torchattacks", type=int, default=1000, help="Of those, how many torchattacks attacks.")
    parser.add_argument("--n-art", type=int, default=200, help="Of those, how many ART attacks (it is slow).")
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("--p-init", type=float, default=0.3)
    parser.add_argument("--n-hsja", type=int, default=100)
    parser.add_argument("--hsja-iters", type=int, default=20, help="ART HopSkipJump's max_iter.")
    parser.add_argument("--n-others", type=int, default=200)
    parser.add_argument("--max-queries-others", type=int, default=2000)
    parser.add_argument("--eps-l2", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.part or ["square", "hsja", "others"]
    model, path = benchmark_model(args.work_dir, args.data_root, checkpoint=args.checkpoint, log=log)
    model.eval()
    x, y = points(model, args.data_root, max(args.n, args.n_hsja, args.n_others))
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    run = {"square": part_square, "hsja": part_hsja, "others": part_others}
    for part in parts:
        n = {"square": args.n, "hsja": args.n_hsja, "others": args.n_others}[part]
        results[part] = {**run[part](model, x[:n], y[:n], args), "checkpoint": str(path)}
        results["machine"] = {**machine_info(), "torch_threads": torch.get_num_threads(),
                              "peers": {"adversarial-robustness-toolbox": version_of("adversarial-robustness-toolbox"),
                                        "torchattacks": version_of("torchattacks")}}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(RESULTS)
    print(table(results))


if __name__ == "__main__":
    main()
