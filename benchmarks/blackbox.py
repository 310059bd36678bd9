"""Black-box attacks on MNIST: Papernot's substitute attack, the ensemble of surrogates against single
surrogates, and the cross-technique transfer matrix.

Parts (``--part``, repeatable; results merge into ``benchmarks/results/blackbox.json``):

- ``substitute``: Papernot et al. (ASIACCS 2017) against the undefended ``cnn-small`` of the benchmarks (the
  cached checkpoint of ``common.benchmark_model``, trained once if missing) behind a label-only oracle with a
  budget of 6,400 queries: seed set of 150 test points (balanced, held out of the evaluation), 6 rounds,
  lambda 0.1, tau 3, FGSM eps 0.3 crafted on the substitute with its own labels, evaluated on the next
  ``--n`` test points. ``--variant`` (repeatable) adds the levers tried (substitute architecture, epochs,
  optimiser, lambda, FGSM's loss, the whole budget with a seed set of 200, an ensemble of substitutes on the
  same labelled points, a longer last round with weight decay and shifts); each is a row of the table, and
  ``--seed`` other than 0 records the variant as ``name@seedS`` (another seed set, initialisation and order).
- ``ensemble``: surrogates (``--surrogates``, default mlp, softmax and lenet5, trained on the first half of the
  MNIST training set) attacked with PGD (``--ensemble-steps``, default 100) one at a time and as Liu et al.'s
  ensemble (ICLR 2017), each transferring to the held-out ``cnn-small`` (trained on all 60,000) on the first
  1,000 test points at eps 0.2 and 0.3.
- ``matrix``: Papernot, McDaniel & Goodfellow's cross-technique matrix (arXiv:1605.07277): a DNN, softmax
  regression, a linear SVM, an RBF SVM, a decision tree, a random forest and kNN, each trained twice, on two
  disjoint halves of the training set (``--matrix-train`` examples of each half, at most 30,000: the whole
  half, which the recorded run used, about 5 minutes of fitting on 2 CPU cores, the RBF SVMs most of it);
  half A crafts (FGSM for the differentiable models, the tree and kNN attacks of advlab for those, the forest
  is a target only), half B is attacked, on the first ``--matrix-n`` test points. The MNIST matrix is stored
  under ``matrix`` (other datasets under ``matrix-<data>``).
  Needs the scikit-learn wrappers (``advlab.models.from_sklearn``).

    flock /tmp/advlab-heavy.lock python benchmarks/blackbox.py --part substitute --part ensemble
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
from advlab.attacks import RobustnessWarning
from advlab.blackbox import split_seed_set, substitute_attack, transfer_attack
from advlab.oracle import Oracle
from advlab.train import Recipe, get_recipe, save_run, train_model
from common import DEFAULT_DATA_ROOT, DEFAULT_WORK_DIR, REPO, benchmark_model, machine_info, markdown_table

RESULTS = REPO / "benchmarks" / "results" / "blackbox.json"

# The levers of Papernot et al.'s section 5 tried on the substitute (name -> substitute_attack options).
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},  # cnn-small substitute, 10 epochs a round, SGD lr 1e-2 momentum 0.9, lambda 0.1
    "mlp-200": {"model": "mlp", "model_options": {"hidden": [200, 200]}},
    "cnn-no-dropout": {"model_options": {"conv_dropout": 0.0, "dropout": 0.0}},
    "lenet5": {"model": "lenet5"},
    "adam": {"recipe": Recipe(epochs=10, lr=1e-3, batch_size=128)},
    "lam-0.2": {"lam": 0.2},
    "jacobian-probs": {"jacobian": "probs"},
    "craft-oracle-labels": {"craft_labels": "oracle"},
    # FGSM on the margin loss: the sign of a gradient that does not vanish where the softmax saturates
    "fgsm-margin": {"attack_options": {"loss": "margin"}},
    "fgsm-margin-lam-0.2": {"attack_options": {"loss": "margin"}, "lam": 0.2},
    "fgsm-margin-lam-0.3": {"attack_options": {"loss": "margin"}, "lam": 0.3},
    "lam-0.3": {"lam": 0.3},
    # the whole budget of 6,400 queries: seed set 200, 6 rounds (200 * 2 ** 5)
    "q6400-margin-lam-0.2": {"seed_size": 200, "attack_options": {"loss": "margin"}, "lam": 0.2},
    # K substitutes on the same labelled points (no extra query), FGSM on their fused loss
    "q6400-margin-lam-0.2-ens3": {"seed_size": 200, "attack_options": {"loss": "margin"}, "lam": 0.2,
                                  "ensemble": 3},
    "q6400-margin-lam-0.2-ens5": {"seed_size": 200, "attack_options": {"loss": "margin"}, "lam": 0.2,
                                  "ensemble": 5},
    # the oracle's labels for crafting (1,000 more queries: 5,800 in all)
    "fgsm-margin-lam-0.2-oracle-labels": {"attack_options": {"loss": "margin"}, "lam": 0.2, "craft_labels": "oracle"},
    # both, without dropout in the substitute
    "fgsm-margin-lam-0.2-oracle-labels-no-dropout": {
        "attack_options": {"loss": "margin"}, "lam": 0.2, "craft_labels": "oracle",
        "model_options": {"conv_dropout": 0.0, "dropout": 0.0}},
    "fgsm-margin-lam-0.25-oracle-labels-no-dropout": {
        "attack_options": {"loss": "margin"}, "lam": 0.25, "craft_labels": "oracle",
        "model_options": {"conv_dropout": 0.0, "dropout": 0.0}},
    # fewer epochs a round: a substitute that follows the oracle's labels less closely
    "fgsm-margin-lam-0.2-5ep": {"attack_options": {"loss": "margin"}, "lam": 0.2,
                                "recipe": Recipe(epochs=5, lr=1e-2, optimizer="sgd", momentum=0.9, batch_size=32,
                                                 schedule=None)},
    # longer last round, weight decay, random shifts of up to 2 pixels, no dropout
    "q6400-margin-lam-0.25-long": {"seed_size": 200, "attack_options": {"loss": "margin"}, "lam": 0.25,
                                   "final_epochs": 30, "shift": 2,
                                   "model_options": {"conv_dropout": 0.0, "dropout": 0.0},
                                   "recipe": Recipe(epochs=10, lr=1e-2, optimizer="sgd", momentum=0.9, batch_size=32,
                                                    schedule=None, weight_decay=5e-4)},
    "q6400-margin-lam-0.25-long-ens3": {"seed_size": 200, "attack_options": {"loss": "margin"}, "lam": 0.25,
                                        "final_epochs": 30, "shift": 2, "ensemble": 3,
                                        "model_options": {"conv_dropout": 0.0, "dropout": 0.0},
                                        "recipe": Recipe(epochs=10, lr=1e-2, optimizer="sgd", momentum=0.9,
                                                         batch_size=32, schedule=None, weight_decay=5e-4)},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def part_substitute(args: argparse.Namespace) -> dict[str, Any]:
    oracle_model, path = benchmark_model(DEFAULT_WORK_DIR, args.data_root, log=log)
    x, y = advlab.load_dataset("mnist", "test", root=args.data_root)
    out: dict[str, Any] = {"oracle_checkpoint": str(path), "n": args.n, "seed_size": 150, "rounds": 6,
                           "max_queries": 6400, "attack": "fgsm", "eps": 0.3, "variants": {}}
    for name in args.variant or ["paper"]:
        options = dict(VARIANTS[name])
        seed_size = options.pop("seed_size", 150)
        # the seed set is drawn from the test split; the evaluation points are the next n test points after it,
        # the same 1,000 points for every seed set of the same draw (seed sizes differ: disjoint either way)
        seed_idx, rest = split_seed_set(y, seed_size, seed=args.seed)
        rest = rest[: args.n]
        oracle = Oracle(oracle_model, output="labels", max_total_queries=6400)
        log(f"substitute attack, variant {name} (seed {args.seed}, seed set {seed_size}): {options}")
        rep = substitute_attack(oracle, x[seed_idx], x[rest], y[rest], attack="fgsm", eps=0.3, rounds=6, tau=3,
                                dataset="mnist", seed=args.seed, progress=True, **{"lam": 0.1, **options})
        d = rep.to_dict()
        d["config"].pop("versions", None)
        d["seed_size"] = seed_size
        key = name if args.seed == 0 else f"{name}@seed{args.seed}"
        out["variants"][key] = d
        log(f"  {name}: oracle misclassification {pct(rep.oracle_misclassification)}, substitute accuracy "
            f"{pct(rep.substitute_accuracy)}, queries {rep.queries}, {rep.seconds['total']:.0f} s")
    rows = [[name, str(v.get("seed_size", 150)), pct(v["oracle_misclassification"]), pct(v["substitute_accuracy"]),
             pct(v["substitute_agreement"]), pct(v["substitute_success"]), str(v["queries"]),
             f"{v['seconds']['total']:.0f}"] for name, v in out["variants"].items()]
    print(markdown_table(["variant", "seed set", "oracle misclassification", "substitute accuracy", "agreement",
                          "white-box on substitute", "queries", "seconds"], rows))
    for name, v in out["variants"].items():
        print(f"\nper round ({name})\n")
        print(markdown_table(["round", "points", "queries", "lambda", "substitute accuracy", "agreement",
                              "train seconds"],
                             [[str(r["round"]), str(r["points"]), str(r["queries"]),
                               "-" if r["lam"] is None else f"{r['lam']:+g}", pct(r.get("accuracy")),
                               pct(r.get("agreement")), f"{r['train_seconds']:.1f}"] for r in v["history"]]))
    return out


def _cached(name: str, x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, tag: str, seed: int,
            data: str = "mnist") -> nn.Module:
    """Zoo model ``name`` trained with its recipe for ``data`` on ``(x, y)``, cached under the work folder."""
    path = DEFAULT_WORK_DIR / "blackbox" / f"{tag}-{name}-seed{seed}"
    if (path / "model.json").exists():
        return advlab.load_checkpoint(path)
    recipe = get_recipe(name, data)
    log(f"training {name} ({tag}, {len(x)} images, {recipe.epochs} epochs)")
    run = train_model(name, (x, y, xt, yt), recipe, dataset=data, seed=seed)
    log(f"  test accuracy {run.summary['test_accuracy']:.4f} in {run.summary['seconds']:.0f} s")
    save_run(run, path)
    return advlab.load_checkpoint(path)


def part_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    target, path = benchmark_model(DEFAULT_WORK_DIR, args.data_root, log=log)
    xtr, ytr = advlab.load_dataset("mnist", "train", root=args.data_root)
    xt, yt = advlab.load_dataset("mnist", "test", root=args.data_root)
    half = len(xtr) // 2
    surrogates = {name: _cached(name, xtr[:half], ytr[:half], xt, yt, "half-a", args.seed)
                  for name in args.surrogates}
    x, y = xt[: args.n_transfer], yt[: args.n_transfer]
    budgets = [0.2, 0.3]
    out: dict[str, Any] = {"target": "cnn-small", "target_checkpoint": str(path), "n": len(x), "eps": budgets,
                           "attack": "pgd", "steps": args.ensemble_steps, "surrogates": {}}
    runs = {**{name: m for name, m in surrogates.items()}, "ensemble": list(surrogates.values())}
    for name, surrogate in runs.items():
        log(f"PGD-{args.ensemble_steps} on {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RobustnessWarning)
            r = transfer_attack(surrogate, {"cnn-small": target}, x, y, attack="pgd", eps=budgets,
                                steps=args.ensemble_steps,
                                generator=torch.Generator().manual_seed(args.seed), batch_size=500)
        acc = None if name == "ensemble" else advlab.train.evaluate_accuracy(surrogate, xt, yt)  # type: ignore[arg-type]
        out["surrogates"][name] = {"test_accuracy": acc, "white_box_rate": r.white_box_rate,
                                   "transfer_rate": r.targets["cnn-small"]["transfer_rate"],
                                   "target_clean_accuracy": r.targets["cnn-small"]["clean_accuracy"],
                                   "seconds": round(r.seconds, 1)}
        log(f"  {json.dumps(out['surrogates'][name])}")
    singles = {k: v for k, v in out["surrogates"].items() if k != "ensemble"}
    ens = out["surrogates"]["ensemble"]["transfer_rate"]
    out["ensemble_beats_every_single"] = [all(ens[i] > v["transfer_rate"][i] for v in singles.values())
                                          for i in range(len(budgets))]
    rows = [[name, pct(v["test_accuracy"]), *(pct(t) for t in v["transfer_rate"]),
             *(pct(w) for w in v["white_box_rate"]), f"{v['seconds']:.0f}"] for name, v in out["surrogates"].items()]
    print(markdown_table(["surrogate", "test accuracy", "transfer eps 0.2", "transfer eps 0.3", "white-box eps 0.2",
                          "white-box eps 0.3", "seconds"], rows))
    return out


def part_matrix(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    from advlab.evaluate import transfer_matrix
    from advlab.models import from_sklearn
    from advlab.report import save_heatmap

    data = args.matrix_data
    xtr, ytr = advlab.load_dataset(data, "train", root=args.data_root)
    xt, yt = advlab.load_dataset(data, "test", root=args.data_root)
    half = len(xtr) // 2
    k = args.matrix_train
    halves = {"A": (xtr[:half][:k], ytr[:half][:k]), "B": (xtr[half:][:k], ytr[half:][:k])}
    estimators = {
        "lr": lambda: LogisticRegression(max_iter=200),
        "svm": lambda: LinearSVC(C=0.1),
        "rbf-svm": lambda: SVC(kernel="rbf", C=10.0, gamma="scale"),
        "tree": lambda: DecisionTreeClassifier(random_state=args.seed),
        "forest": lambda: RandomForestClassifier(n_estimators=20, random_state=args.seed),
        "knn": lambda: KNeighborsClassifier(n_neighbors=3),
    }
    models: dict[str, nn.Module] = {}
    fit_seconds: dict[str, float] = {}
    for h, (x, y) in halves.items():
        t0 = time.perf_counter()
        models[f"dnn-{h}"] = _cached("mlp", x, y, xt, yt, f"matrix-{data}-{h}-{k}", args.seed, data=data)
        fit_seconds[f"dnn-{h}"] = round(time.perf_counter() - t0, 1)  # ~0 when loaded from the cache
        for name, make in estimators.items():
            t0 = time.perf_counter()
            est = make().fit(x.flatten(1).numpy(), y.numpy())
            fit_seconds[f"{name}-{h}"] = round(time.perf_counter() - t0, 1)
            models[f"{name}-{h}"] = from_sklearn(est, in_shape=tuple(x.shape[1:]))
            log(f"fitted {name}-{h} in {fit_seconds[f'{name}-{h}']} s")
    kind_attack = {"tree": "tree", "knn": "knn", "forest": None}
    attack = {name: (None if name.endswith("-B") else kind_attack.get(name[:-2], args.matrix_attack))
              for name in models}
    x, y = xt[: args.matrix_n], yt[: args.matrix_n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        m = transfer_matrix(models, x, y, attack=attack, eps=0.3, norm="linf", seed=args.seed, batch_size=250)
    techniques = ["dnn", *estimators]
    sources = [t for t in techniques if m.attacks.get(f"{t}-A") is not None]
    table = [[f"{t} ({m.attacks[f'{t}-A']})", pct(m.rate(f"{t}-A", f"{t}-A")),
              *(pct(m.rate(f"{t}-A", f"{u}-B")) for u in techniques)] for t in sources]
    print(markdown_table(["source (A)", "white-box", *(f"{u} (B)" for u in techniques)], table))
    print("\nclean accuracy: " + ", ".join(f"{n} {pct(a)}" for n, a in m.clean_accuracy.items()))
    rows = [[float(m.rate(f"{t}-A", f"{u}-B")) for u in techniques] if m.attacks.get(f"{t}-A") else None  # type: ignore[arg-type]
            for t in techniques]
    png = REPO / "benchmarks" / "results" / f"blackbox-matrix-{data}.png"
    save_heatmap(rows, png, row_labels=[f"{t} (A)" for t in techniques], col_labels=[f"{t} (B)" for t in techniques],
                 title=f"transfer rate ({data}), linf eps=0.3, n={len(x)}", diagonal="same technique", overwrite=True)
    out = m.to_dict()
    out["config"].pop("versions", None)
    out.update({"data": data, "train_per_half": min(k, half), "fit_seconds": fit_seconds,
                "fit_seconds_total": round(sum(fit_seconds.values()), 1), "heatmap": str(png.relative_to(REPO))})
    return out


def part_networks(args: argparse.Namespace) -> dict[str, Any]:
    """RBF and maxout networks as targets: zoo networks trained for 2 epochs on disjoint halves of the MNIST
    training set (sources on half A, targets on half B), FGSM transfer at eps 0.3."""
    xtr, ytr = advlab.load_dataset("mnist", "train", root=args.data_root)
    xt, yt = advlab.load_dataset("mnist", "test", root=args.data_root)
    order = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(args.seed))
    half = xtr.shape[0] // 2
    halves = {"A": order[:half], "B": order[half:]}
    recipe = Recipe(epochs=2, lr=1e-3, batch_size=128)
    models: dict[str, nn.Module] = {}
    for h, zoo in (("A", ("mlp", "cnn-small")), ("B", ("mlp", "cnn-small", "rbf", "maxout"))):
        for name in zoo:
            path = DEFAULT_WORK_DIR / "blackbox" / f"networks-{h}-{name}-seed{args.seed}"
            if not (path / "model.json").exists():
                log(f"training {name} on half {h} ({half} images, 2 epochs)")
                idx = halves[h]
                run = train_model(name, (xtr[idx], ytr[idx], xt, yt), recipe, dataset="mnist", seed=args.seed)
                log(f"  test accuracy {run.summary['test_accuracy']:.4f} in {run.summary['seconds']:.0f} s")
                save_run(run, path)
            models[f"{name}-{h}"] = advlab.load_checkpoint(path)
    attacks = {k: ("fgsm" if k.endswith("-A") else None) for k in models}
    from advlab.evaluate import transfer_matrix

    matrix = transfer_matrix(models, xt[: args.matrix_n], yt[: args.matrix_n], attack=attacks, eps=0.3,
                             norm="linf", seed=args.seed, batch_size=250)
    out = matrix.to_dict()
    png = RESULTS.parent / "blackbox-networks-mnist.png"
    matrix.save_heatmap(png, overwrite=True)
    out["heatmap"] = str(png.relative_to(REPO))
    print(markdown_table(["source \\ target", *matrix.names],
                         [[src, *[pct(v) if v is not None else "-" for v in row]]
                          for src, row in zip(matrix.names, out["rates"], strict=True) if row is not None]))
    return out


PARTS = {"substitute": part_substitute, "ensemble": part_ensemble, "matrix": part_matrix, "networks": part_networks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=sorted(PARTS), required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--n", type=int, default=1000, help="test points attacked by the substitute attack")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--surrogates", nargs="+", default=["mlp", "softmax", "lenet5"])
    parser.add_argument("--n-transfer", type=int, default=1000)
    parser.add_argument("--ensemble-steps", type=int, default=100, help="PGD steps of the ensemble part")
    parser.add_argument("--matrix-train", type=int, default=5000, help="training examples of each half")
    parser.add_argument("--matrix-n", type=int, default=500)
    parser.add_argument("--matrix-attack", default="fgsm")
    parser.add_argument("--matrix-data", default="mnist", help="dataset of the matrix (digits: a quick check)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for part in args.part:
        log(f"part {part}")
        t0 = time.perf_counter()
        value = PARTS[part](args)
        key = part if part != "matrix" or args.matrix_data == "mnist" else f"matrix-{args.matrix_data}"
        if part == "substitute" and isinstance(results.get(key), dict):  # variants of earlier runs are kept
            value["variants"] = {**results[key].get("variants", {}), **value["variants"]}
        results[key] = {"machine": machine_info(), "seconds": round(time.perf_counter() - t0, 1), **value}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(RESULTS)
        if part == "substitute":
            print("\nevery variant recorded\n")
            print(substitute_table(results[key]["variants"]))


def substitute_table(variants: dict[str, Any]) -> str:
    """The markdown table of every recorded substitute-attack variant."""
    rows = [[name, str(v.get("seed_size", 150)), str(v["config"]["substitute"].get("ensemble", 1)),
             pct(v["oracle_misclassification"]), pct(v["substitute_accuracy"]), pct(v["substitute_agreement"]),
             pct(v["substitute_success"]), str(v["queries"]), f"{v['seconds']['total']:.0f}"]
            for name, v in variants.items()]
    return markdown_table(["variant", "seed set", "ensemble", "oracle misclassification", "substitute accuracy",
                           "agreement", "white-box on substitute", "queries", "seconds"], rows)


if __name__ == "__main__":
    main()
