"""Adversarial training on MNIST at eps 0.3: advlab's defenses side by side with the Adversarial Robustness
Toolbox's fast adversarial trainer, and the family's other claims.

Parts (``--part``, repeatable; results merge into ``benchmarks/results/defenses.json``):

- ``fast``: ``fast-at`` on ``cnn-small`` with its recommended recipe, then ART's ``AdversarialTrainerFBFPyTorch``
  on the same architecture, initial weights, data and epochs; wall time of each training; clean accuracy on the
  10,000 test images, PGD-50 (1 restart) on all of them and PGD-50 with 10 restarts on the first ``--n-restarts``.
- ``family``: ``pgd-at`` and ``trades`` at two betas (recommended recipes; ``--pgd-epochs``, ``--trades-epochs``
  and ``--family-steps`` shorten them), evaluated the same way on the first ``--n-restarts`` test images.
- ``fgsm``: ``fgsm-at`` (alpha 0.5, eps 0.25) against standard training of an MLP: FGSM error at eps 0.25.
- ``ensemble``: ``ensemble-at`` against ``fgsm-at`` (both MLPs, eps 0.3): error on transfer examples crafted
  on a held-out model (a separately trained cnn-small).

Every run trains through :func:`advlab.defenses.train_defended` (or ``train_model``) in the default process (no
tuned allocator or thread settings).

    python benchmarks/defenses.py --part fast --part family --data-root ../shared/data
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
from advlab.defenses import defense_recipe, defense_spec, train_defended
from advlab.train import ProgressBar, get_recipe, train_model
from common import DEFAULT_DATA_ROOT, REPO, machine_info

RESULTS = REPO / "benchmarks" / "results" / "defenses.json"
EPS = 0.3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def robust(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, restarts: int, seed: int = 0,
           batch_size: int = 500) -> dict[str, Any]:
    """Robust accuracy under PGD (early stop: the same successes in fewer passes) and its cost."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        r = advlab.attacks.pgd(model, x, y, eps=eps, steps=steps, restarts=restarts, early_stop=True,
                               generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    acc = float((r.clean_correct & ~r.success[0]).float().mean())
    return {"robust_accuracy": acc, "clean_accuracy": float(r.clean_correct.float().mean()), "n": len(x),
            "steps": steps, "restarts": restarts, "seconds": round(time.perf_counter() - t0, 1)}


def evaluate(model: nn.Module, xt: Tensor, yt: Tensor, n_restarts: int, full: bool) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {"clean_accuracy": advlab.train.evaluate_accuracy(model, xt, yt)}
    if full:
        log("  PGD-50 x1 on all test images")
        out["pgd50"] = robust(model, xt, yt, eps=EPS, steps=50, restarts=1)
    log(f"  PGD-50 x10 on the first {n_restarts}")
    out["pgd50x10"] = robust(model, xt[:n_restarts], yt[:n_restarts], eps=EPS, steps=50, restarts=10)
    return out


def part_fast(args: argparse.Namespace, xt: Tensor, yt: Tensor) -> dict[str, Any]:
    recipe = defense_recipe("fast-at", "cnn-small", "mnist", epochs=args.epochs)
    log(f"advlab fast-at: {recipe}")
    t0 = time.perf_counter()
    run = train_defended("cnn-small", "mnist", "fast-at", eps=EPS, recipe=recipe, seed=args.seed,
                         data_root=args.data_root, callbacks=[ProgressBar(every=50)])
    ours_wall = time.perf_counter() - t0
    ours = {"train_wall_seconds": round(ours_wall, 1), "fit_seconds": run.summary["seconds"],
            "model_options": run.summary["model_options"],
            "recipe": recipe.to_dict(), "monitor": run.summary["monitor"],
            **evaluate(run.model, xt, yt, args.n_restarts, True)}
    log(f"advlab fast-at: {json.dumps({k: v for k, v in ours.items() if k != 'monitor'})}")
    art = art_fbf(args, recipe.epochs, recipe.batch_size, xt, yt)
    return {"advlab_fast_at": ours, "art_fbf": art}


def art_fbf(args: argparse.Namespace, epochs: int, batch_size: int, xt: Tensor, yt: Tensor) -> dict[str, Any]:
    """ART's fast adversarial trainer on the same architecture and initial weights (``train_model``'s seeding)."""
    import numpy as np
    from art.defences.trainer import AdversarialTrainerFBFPyTorch
    from art.estimators.classification import PyTorchClassifier

    x, y = advlab.load_dataset("mnist", "train", root=args.data_root)
    options = defense_spec("fast-at").recommended_model_options("cnn-small", "mnist")  # the same model as fast-at's
    model = advlab.create_model("cnn-small", dataset="mnist", generator=torch.Generator().manual_seed(args.seed),
                                **options)
    model.check_inputs = False  # as advlab's loop, which validates the data once
    # ART's trainer sets the learning rate itself (a triangle peaking at 0.21, made for SGD).
    opt = torch.optim.SGD(model.parameters(), lr=0.21, momentum=0.9, weight_decay=5e-4)
    clf = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    trainer = AdversarialTrainerFBFPyTorch(clf, eps=EPS)
    onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    np.random.seed(args.seed)
    log(f"ART FBF: {epochs} epochs, batch {batch_size}, SGD momentum 0.9 with ART's own schedule")
    t0 = time.perf_counter()
    trainer.fit(x.numpy(), onehot, nb_epochs=epochs, batch_size=batch_size)
    wall = time.perf_counter() - t0
    model.check_inputs = True
    out = {"train_wall_seconds": round(wall, 1), "epochs": epochs, "batch_size": batch_size, "model_options": options,
           "optimizer": "sgd momentum 0.9, wd 5e-4, ART's cyclic lr (peak 0.21)",
           **evaluate(model, xt, yt, args.n_restarts, True)}
    log(f"ART FBF: {json.dumps(out)}")
    return out


def part_family(args: argparse.Namespace, xt: Tensor, yt: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    steps = args.family_steps
    runs = [("pgd-at", {"steps": steps}, args.pgd_epochs),
            ("trades", {"beta": 1.0, "steps": steps}, args.trades_epochs),
            ("trades", {"beta": 6.0, "steps": steps}, args.trades_epochs)]
    for name, options, epochs in runs:
        key = name + "".join(f"-{k}{v:g}" for k, v in options.items())
        recipe = defense_recipe(name, "cnn-small", "mnist", epochs=epochs)
        log(f"{key}: {recipe}")
        t0 = time.perf_counter()
        run = train_defended("cnn-small", "mnist", name, eps=EPS, options=options, recipe=recipe, seed=args.seed,
                             data_root=args.data_root, callbacks=[ProgressBar(every=50)])
        out[key] = {"train_wall_seconds": round(time.perf_counter() - t0, 1), "recipe": recipe.to_dict(),
                    "options": run.summary["defense"]["options"],
                    **evaluate(run.model, xt, yt, args.n_restarts, False)}
        log(f"{key}: {json.dumps(out[key])}")
    return out


def fgsm_error(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> float:
    r = advlab.attacks.fgsm(model, x, y, eps=eps)
    return 1.0 - float((r.clean_correct & ~r.success[0]).float().mean())


def part_fgsm(args: argparse.Namespace, xt: Tensor, yt: Tensor) -> dict[str, Any]:
    eps = 0.25
    out: dict[str, Any] = {}
    for model in args.fgsm_models:
        recipe = get_recipe(model, "mnist")
        base = train_model(model, "mnist", recipe, seed=args.seed, data_root=args.data_root).model
        defended = train_defended(model, "mnist", "fgsm-at", eps=eps, options={"alpha": 0.5}, recipe=recipe,
                                  seed=args.seed, data_root=args.data_root).model
        out[model] = {
            "recipe": recipe.to_dict(),
            "standard": {"clean_error": 1 - advlab.train.evaluate_accuracy(base, xt, yt),
                         "fgsm_error": fgsm_error(base, xt, yt, eps)},
            "fgsm_at": {"clean_error": 1 - advlab.train.evaluate_accuracy(defended, xt, yt),
                        "fgsm_error": fgsm_error(defended, xt, yt, eps)},
        }
        log(f"fgsm-at {model}: {json.dumps(out[model])}")
    return out


def part_ensemble(args: argparse.Namespace, xt: Tensor, yt: Tensor) -> dict[str, Any]:
    """Tramèr et al.'s direction: ensemble-at lowers the error on transfer examples from a held-out model."""
    model = "mlp"
    recipe = get_recipe(model, "mnist")
    statics = [train_model(m, "mnist", get_recipe(m, "mnist"), seed=10 + i, data_root=args.data_root).model
               for i, m in enumerate(("mlp", "softmax"))]
    holdout = train_model("cnn-small", "mnist", get_recipe("cnn-small", "mnist", epochs=1), seed=20,
                          data_root=args.data_root).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        transfer = {
            "fgsm": advlab.attacks.fgsm(holdout, xt, yt, eps=EPS).x_adv[0],
            "pgd": advlab.attacks.pgd(holdout, xt, yt, eps=EPS, steps=20,
                                      generator=torch.Generator().manual_seed(0)).x_adv[0],
        }
    out: dict[str, Any] = {"holdout": "cnn-small (1 epoch, seed 20)", "static": ["mlp (seed 10)", "softmax (seed 11)"]}
    for name, kwargs in (("fgsm-at", {}), ("ensemble-at", {"static": statics})):
        net = train_defended(model, "mnist", name, eps=EPS, recipe=recipe, seed=args.seed,
                             data_root=args.data_root, **kwargs).model  # type: ignore[arg-type]
        net.eval()
        with torch.no_grad():
            errors = {k: float((net(v).argmax(1) != yt).float().mean()) for k, v in transfer.items()}
        out[name] = {"clean_error": 1 - advlab.train.evaluate_accuracy(net, xt, yt), "transfer_error": errors}
        log(f"{name}: {json.dumps(out[name])}")
    return out


PARTS = {"fast": part_fast, "family": part_family, "fgsm": part_fgsm, "ensemble": part_ensemble}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=sorted(PARTS), required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--epochs", type=int, default=None, help="fast-at epochs (default: its recipe)")
    parser.add_argument("--pgd-epochs", type=int, default=None, help="pgd-at epochs (default: its recipe)")
    parser.add_argument("--trades-epochs", type=int, default=None, help="trades epochs (default: its recipe)")
    parser.add_argument("--family-steps", type=int, default=10, help="inner steps of pgd-at and trades")
    parser.add_argument("--n-restarts", type=int, default=1000, help="test images for PGD-50 x10")
    parser.add_argument("--fgsm-models", nargs="+", default=["mlp"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    xt, yt = advlab.load_dataset("mnist", "test", root=args.data_root)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for part in args.part:
        log(f"part {part}")
        t0 = time.perf_counter()
        value = PARTS[part](args, xt, yt)
        results[part] = {"machine": machine_info(), "seconds": round(time.perf_counter() - t0, 1), **value}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(RESULTS)
    print(json.dumps({p: {k: v for k, v in results[p].items() if k != "machine"} for p in args.part}, indent=1))


if __name__ == "__main__":
    main()
