"""Attacks on non-neural models on MNIST: a decision tree and k-nearest neighbours.

Decision tree (scikit-learn, fitted on ``--n-train-tree`` training images): the exact ``tree`` attack at L0
and L∞, ``tree_papernot``, and the Adversarial Robustness Toolbox's ``DecisionTreeAttack`` (Papernot et al.'s
method too) when ART is installed, on the same test images: success rate, median L0 change, time.

kNN (``k=5``, fitted on the first ``--n-train-knn`` training images): the white-box ``knn`` attack against
PGD and FGSM/FGM transferred from a logistic-regression surrogate fitted on the *next* ``--n-train-knn``
training images (disjoint data), at the same L2 and L∞ budgets: the kNN's error rate on each.

Prints Markdown tables; the JSON record (machine, date, versions) goes to ``benchmarks/results/nonneural.json``
(an existing file is kept unless ``--overwrite``).

Usage::

    flock /tmp/advlab-heavy.lock python benchmarks/nonneural.py            # ~10 min on 2 CPU cores
    python benchmarks/nonneural.py --quick                                  # smoke test, a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA_ROOT, REPO, machine_info, markdown_table, version_of
from rbf_fgsm import write_json

DEFAULT_OUT = REPO / "benchmarks" / "results" / "nonneural.json"
L0_BUDGETS = (1.0, 2.0, 3.0, 5.0, 10.0, 784.0)
LINF_TREE = (0.01, 0.05, 0.1, 1.0)
L2_KNN = (1.0, 2.0, 3.0, 4.0)
LINF_KNN = (0.05, 0.1, 0.2, 0.3)


def _median(values: torch.Tensor) -> float | None:
    return float(values.float().median()) if values.numel() else None


def tree_part(x_train: torch.Tensor, y_train: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              log: Any) -> dict[str, Any]:
    from sklearn.tree import DecisionTreeClassifier

    import advlab
    from advlab.models import from_sklearn

    t0 = time.perf_counter()
    est = DecisionTreeClassifier(random_state=0).fit(x_train.flatten(1).numpy(), y_train.numpy())
    fit_s = time.perf_counter() - t0
    model = from_sklearn(est, in_shape=(1, 28, 28))
    acc = float((est.predict(x.flatten(1).numpy()) == y.numpy()).mean())
    log(f"tree: {est.tree_.node_count} nodes, {est.get_n_leaves()} leaves, depth {est.get_depth()}, "
        f"accuracy {acc:.4f} on the attacked points, fitted in {fit_s:.1f} s")
    out: dict[str, Any] = {"n_train": len(x_train), "n_leaves": int(est.get_n_leaves()),
                           "depth": int(est.get_depth()), "accuracy": acc, "fit_seconds": fit_s, "runs": []}
    correct = torch.from_numpy(est.predict(x.flatten(1).numpy()) == y.numpy())
    for name, norm, budgets in (("tree", "l0", L0_BUDGETS), ("tree", "linf", LINF_TREE),
                                ("tree_papernot", "l0", L0_BUDGETS)):
        t0 = time.perf_counter()
        r = advlab.attacks.get_attack(name)(model, x, y, eps=list(budgets), norm=norm)
        seconds = time.perf_counter() - t0
        last = r.success[-1] & correct
        l0 = (r.x_adv[-1] != x).flatten(1).sum(1)
        run = {"attack": name, "norm": norm, "eps": list(budgets), "seconds": seconds,
               "success_among_correct": [float((s & correct).sum()) / max(int(correct.sum()), 1) for s in r.success],
               "median_l0": _median(l0[last]),
               "median_linf": _median(r.distances[-1][last]) if norm == "linf" else None}
        out["runs"].append(run)
        log(f"{name} ({norm}): {run['success_among_correct']} in {seconds:.2f} s, median L0 {run['median_l0']}")
    try:
        from art.attacks.evasion import DecisionTreeAttack
        from art.estimators.classification import SklearnClassifier
    except ImportError:
        out["art"] = None
        return out
    art_model = SklearnClassifier(model=est, clip_values=(0.0, 1.0))
    attack = DecisionTreeAttack(classifier=art_model, offset=0.001, verbose=False)
    t0 = time.perf_counter()
    x_art = attack.generate(x.flatten(1).numpy().astype(np.float32))
    seconds = time.perf_counter() - t0
    broken = torch.from_numpy(est.predict(x_art) != y.numpy()) & correct
    l0 = torch.from_numpy((x_art != x.flatten(1).numpy()).sum(1))
    out["art"] = {"attack": "art.DecisionTreeAttack", "seconds": seconds,
                  "version": version_of("adversarial-robustness-toolbox"),
                  "success_among_correct": float(broken.sum()) / max(int(correct.sum()), 1),
                  "median_l0": _median(l0[broken])}
    log(f"ART DecisionTreeAttack: {out['art']['success_among_correct']:.3f} in {seconds:.2f} s, "
        f"median L0 {out['art']['median_l0']}")
    return out


def knn_part(x_train: torch.Tensor, y_train: torch.Tensor, x_other: torch.Tensor, y_other: torch.Tensor,
             x: torch.Tensor, y: torch.Tensor, log: Any) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    import advlab
    from advlab.models import from_sklearn

    model = from_sklearn(KNeighborsClassifier(5).fit(x_train.flatten(1).numpy(), y_train.numpy()),
                         in_shape=(1, 28, 28))
    t0 = time.perf_counter()
    logistic = LogisticRegression(max_iter=200).fit(x_other.flatten(1).numpy(), y_other.numpy())
    surrogate = from_sklearn(logistic, in_shape=(1, 28, 28))
    log(f"surrogate (logistic regression on {len(x_other)} other images) fitted in {time.perf_counter() - t0:.1f} s")
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        surrogate_acc = float((surrogate(x).argmax(1) == y).float().mean())
    out: dict[str, Any] = {"n_train": len(x_train), "k": 5, "accuracy": float(correct.float().mean()),
                           "surrogate": "logistic regression", "surrogate_accuracy": surrogate_acc, "rows": []}
    log(f"kNN accuracy {out['accuracy']:.4f}, surrogate accuracy {surrogate_acc:.4f}")

    def rate(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        return float((wrong & correct).sum()) / max(int(correct.sum()), 1)

    gen = torch.Generator().manual_seed(0)
    for norm, budgets in (("l2", L2_KNN), ("linf", LINF_KNN)):
        t0 = time.perf_counter()
        white = advlab.attacks.knn(model, x, y, eps=list(budgets), norm=norm)
        white_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        moved = advlab.attacks.pgd(surrogate, x, y, eps=list(budgets), norm=norm, steps=40, generator=gen)
        one = advlab.attacks.get_attack("fgsm" if norm == "linf" else "fgm")(surrogate, x, y, eps=list(budgets),
                                                                              norm=norm)
        transfer_s = time.perf_counter() - t0
        for i, e in enumerate(budgets):
            row = {"norm": norm, "eps": e, "knn_white_box": rate(white.x_adv[i]), "pgd_transfer": rate(moved.x_adv[i]),
                   "fgsm_transfer": rate(one.x_adv[i])}
            out["rows"].append(row)
        out.setdefault("seconds", {})[norm] = {"knn": white_s, "transfer": transfer_s,
                                               "knn_queries": white.n_queries}
        log(f"kNN {norm}: white-box in {white_s:.1f} s ({white.n_queries} queries), transfer in {transfer_s:.1f} s")
    return out


def render(record: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    tree = record["tree"]
    rows = []
    for run in tree["runs"]:
        for e, s in zip(run["eps"], run["success_among_correct"], strict=True):
            rows.append([run["attack"], run["norm"], f"{e:g}", pct(s), f"{run['median_l0']}", f"{run['seconds']:.2f}"])
    if tree.get("art"):
        art = tree["art"]
        rows.append(["ART DecisionTreeAttack", "l0", "(none)", pct(art["success_among_correct"]),
                     f"{art['median_l0']}", f"{art['seconds']:.2f}"])
    head = (f"Decision tree on MNIST ({tree['n_train']} training images, {tree['n_leaves']} leaves, depth "
            f"{tree['depth']}, accuracy {100 * tree['accuracy']:.1f} %), {record['n_tree']} test images; success "
            f"among the correctly classified; median L0 of the successes at the largest budget\n\n")
    table = head + markdown_table(["attack", "norm", "eps", "success", "median L0", "seconds (all eps)"], rows)
    knn = record["knn"]
    rows = [[r["norm"], f"{r['eps']:g}", pct(r["knn_white_box"]), pct(r["pgd_transfer"]), pct(r["fgsm_transfer"])]
            for r in knn["rows"]]
    head = (f"\n\nkNN (k=5, {knn['n_train']} training images, accuracy {100 * knn['accuracy']:.1f} %) on "
            f"{record['n_knn']} test images: error rate among the correctly classified; transfer from "
            f"{knn['surrogate']} fitted on other images (accuracy {100 * knn['surrogate_accuracy']:.1f} %)\n\n")
    return table + head + markdown_table(["norm", "eps", "knn (white-box)", "PGD transfer", "FGSM/FGM transfer"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="Folder holding mnist/.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    parser.add_argument("--n-tree", type=int, default=1_000, help="Test images attacked on the tree.")
    parser.add_argument("--n-knn", type=int, default=500, help="Test images attacked on the kNN.")
    parser.add_argument("--n-train-tree", type=int, default=60_000, help="Training images of the tree.")
    parser.add_argument("--n-train-knn", type=int, default=10_000, help="Training images of the kNN (and surrogate).")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 100 points, small training sets.")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_tree, args.n_knn, args.n_train_tree, args.n_train_knn = 100, 50, 5_000, 2_000
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it or --out for another file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(args.out.parent, os.W_OK):
        parser.error(f"cannot write to {args.out.parent}; choose a writable --out")

    import advlab

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    x_train, y_train = advlab.load_dataset("mnist", "train", root=args.data_root)
    x_test, y_test = advlab.load_dataset("mnist", "test", root=args.data_root)
    record: dict[str, Any] = {"benchmark": "nonneural", "machine": machine_info(), "dataset": "mnist",
                              "n_tree": args.n_tree, "n_knn": args.n_knn, "quick": args.quick,
                              "sklearn": version_of("scikit-learn")}
    record["tree"] = tree_part(x_train[: args.n_train_tree], y_train[: args.n_train_tree], x_test[: args.n_tree],
                               y_test[: args.n_tree], log)
    n = args.n_train_knn
    record["knn"] = knn_part(x_train[:n], y_train[:n], x_train[n : 2 * n], y_train[n : 2 * n], x_test[: args.n_knn],
                             y_test[: args.n_knn], log)
    write_json(args.out, record)
    print(render(record))
    log(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
