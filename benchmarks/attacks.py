"""Attack benchmark: advlab side by side with torchattacks, ART, Foolbox and CleverHans.

One model (``cnn-small`` trained on MNIST), the same test images, one batch, the same hyper-parameters for
every library. Every library's adversarial examples are judged by the same code here: robust accuracy (the
fraction of all examples still classified correctly), success rate among the clean-correct ones, median L2
norm of the successful perturbations, and whether every example stays inside the ball and the bounds.

Timings are the best of ``--repeats`` runs; within each repeat the libraries are interleaved (and the order
rotated) so that load from other processes hits them alike; ratios (to the limit, between libraries) are the
median over repeats of the ratio of runs made back to back. Iterative attacks are compared with the
*physical limit*: the time of ``k`` forward+backward passes with respect to the input on the same batch
(``k`` = gradient steps), measured in the same loop. A forward-only pass is timed too.

Peers are optional: a library that is not installed is reported as such. Install them with
``pip install adversarial-robustness-toolbox foolbox cleverhans`` and ``pip install --no-deps torchattacks``
(torchattacks declares a torchvision dependency it does not import; it needs numpy, scipy, requests, tqdm).

Usage::

    python benchmarks/attacks.py                       # everything, ~10 min on 2 CPU cores (after training)
    python benchmarks/attacks.py --n 256 --n-min-norm 32 --repeats 5 --cell-timeout 180   # the README table
    python benchmarks/attacks.py --attacks pgd-linf,bim --peers torchattacks --n 512 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import signal
import statistics
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_DATA_ROOT,
    DEFAULT_WORK_DIR,
    benchmark_model,
    ensure_steady_malloc,
    machine_info,
    markdown_table,
    timed,
    version_of,
)

LIBRARIES = ("advlab", "torchattacks", "art", "foolbox", "cleverhans")
PEERS = LIBRARIES[1:]
DISTRIBUTIONS = {
    "advlab": "advlab", "torchattacks": "torchattacks", "art": "adversarial-robustness-toolbox",
    "foolbox": "foolbox", "cleverhans": "cleverhans",
}
OWN_ROWS = ("advlab", "advlab-defaults", "advlab-early-stop", "limit")  # rows that are not peers
EARLY_STOP = ("bim", "pgd-linf", "pgd-l2")  # attacks also run with early_stop=True (row advlab-early-stop)
UNBOUNDED = 1e3  # budget for minimum-norm attacks: far larger than any image's L2 diameter


@dataclass(frozen=True)
class Setting:
    """One attack configuration, run identically by every library."""

    key: str
    title: str
    norm: str
    eps: float | None  # None: minimum-norm attack
    steps: int  # gradient steps (the k of the physical limit); 0 when variable
    step_size: float = 0.0
    fixed_cost: bool = True  # every example takes exactly `steps` gradient steps
    clean_start: bool = True  # the first gradient is taken at the clean input (no random start)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def min_norm(self) -> bool:
        return self.eps is None


def make_settings(eps_linf: float, eps_l2: float, steps: int) -> dict[str, Setting]:
    """The benchmarked attacks (PGD/BIM step size 2.5·eps/steps as in Madry et al.; MI-FGSM eps/steps)."""
    return {s.key: s for s in [
        Setting("fgsm", f"FGSM L∞ ε={eps_linf:g}", "linf", eps_linf, 1, eps_linf),
        Setting("bim", f"BIM L∞ ε={eps_linf:g}, {steps} steps", "linf", eps_linf, steps, 2.5 * eps_linf / steps),
        Setting("pgd-linf", f"PGD L∞ ε={eps_linf:g}, {steps} steps, random start", "linf", eps_linf, steps,
                2.5 * eps_linf / steps, clean_start=False),
        Setting("pgd-l2", f"PGD L2 ε={eps_l2:g}, {steps} steps, random start", "l2", eps_l2, steps,
                2.5 * eps_l2 / steps, clean_start=False),
        Setting("mifgsm", f"MI-FGSM L∞ ε={eps_linf:g}, {steps} steps, decay 1", "linf", eps_linf, steps,
                eps_linf / steps, params={"decay": 1.0}),
        Setting("apgd", f"APGD-CE L∞ ε={eps_linf:g}, {steps} steps", "linf", eps_linf, steps, 2 * eps_linf,
                clean_start=False),
        Setting("deepfool", "DeepFool L2, ≤50 steps, 10 candidates, overshoot 0.02", "l2", None, 50,
                fixed_cost=False, params={"steps": 50, "candidates": 10, "overshoot": 0.02}),
        Setting("cw", "C&W L2, 5 binary-search steps × 100 iterations, lr 0.01, c₀=0.1", "l2", None, 500,
                fixed_cost=False, params={"binary_search_steps": 5, "steps": 100, "lr": 0.01,
                                          "initial_const": 0.1, "confidence": 0.0}),
    ]}


class Skip(Exception):
    """A library does not offer this attack (or cannot run it); the message says why."""


class CellTimeout(Exception):
    """One run took longer than ``--cell-timeout``."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raises :class:`CellTimeout` in the main thread after ``seconds`` (checked between Python bytecodes)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise CellTimeout(f"stopped after {seconds:.0f} s (--cell-timeout)")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- one runner per library
# Each returns a function (model, x, y, seed) -> x_adv, or raises Skip.

Runner = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


def advlab_runner(s: Setting, n: int, device: torch.device) -> Runner:
    import advlab.attacks as A

    names = {"fgsm": "fgsm", "bim": "bim", "pgd-linf": "pgd", "pgd-l2": "pgd", "mifgsm": "mifgsm",
             "apgd": "apgd", "deepfool": "deepfool", "cw": "cw"}
    name = names[s.key]
    if name not in A.list_attacks():
        raise Skip("not implemented yet")
    fn = A.get_attack(name)
    kwargs: dict[str, Any] = {"eps": s.eps if s.eps is not None else UNBOUNDED, "norm": s.norm}
    if s.key in ("bim", "pgd-linf", "pgd-l2", "mifgsm"):
        kwargs.update(steps=s.steps, step_size=s.step_size)
    if s.key == "apgd":
        kwargs.update(steps=s.steps)
    kwargs.update(s.params)

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        result = fn(model, x, y, generator=torch.Generator().manual_seed(seed), **kwargs)
        return result.x_adv[0]

    return run


def torchattacks_runner(s: Setting, n: int, device: torch.device) -> Runner:
    import torchattacks as ta

    def build(model: nn.Module) -> Any:
        if s.key == "fgsm":
            return ta.FGSM(model, eps=s.eps)
        if s.key == "bim":
            return ta.BIM(model, eps=s.eps, alpha=s.step_size, steps=s.steps)
        if s.key == "pgd-linf":
            return ta.PGD(model, eps=s.eps, alpha=s.step_size, steps=s.steps, random_start=True)
        if s.key == "pgd-l2":
            return ta.PGDL2(model, eps=s.eps, alpha=s.step_size, steps=s.steps, random_start=True)
        if s.key == "mifgsm":
            return ta.MIFGSM(model, eps=s.eps, alpha=s.step_size, steps=s.steps, decay=s.params["decay"])
        if s.key == "apgd":
            return ta.APGD(model, norm="Linf", eps=s.eps, steps=s.steps, n_restarts=1, loss="ce", seed=0)
        if s.key == "deepfool":
            return ta.DeepFool(model, steps=s.params["steps"], overshoot=s.params["overshoot"])
        if s.key == "cw":  # no binary search over c: one constant, as many iterations as 5 x 100
            p = s.params  # c=10: with c=1 fewer than half of the images are broken on this model
            return ta.CW(model, c=10.0, kappa=p["confidence"], steps=p["binary_search_steps"] * p["steps"],
                         lr=p["lr"])
        raise Skip("not offered")

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        torch.manual_seed(seed)  # torchattacks draws random starts from the global generator
        attack = build(model)
        if hasattr(attack, "seed"):
            attack.seed = seed  # APGD re-seeds the global generator from its own seed
        return attack(x, y)

    return run


def art_runner(s: Setting, n: int, device: torch.device) -> Runner:
    from art.attacks import evasion as E
    from art.estimators.classification import PyTorchClassifier

    def build(model: nn.Module, shape: tuple[int, ...], classes: int) -> Any:
        clf = PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes, clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        common = {"batch_size": n}
        norm = np.inf if s.norm == "linf" else 2
        if s.key == "fgsm":
            return E.FastGradientMethod(clf, norm=norm, eps=s.eps, **common)
        if s.key == "bim":
            return E.BasicIterativeMethod(clf, eps=s.eps, eps_step=s.step_size, max_iter=s.steps, verbose=False,
                                          **common)
        if s.key in ("pgd-linf", "pgd-l2"):
            return E.ProjectedGradientDescentPyTorch(clf, norm=norm, eps=s.eps, eps_step=s.step_size,
                                                     max_iter=s.steps, num_random_init=1, verbose=False, **common)
        if s.key == "mifgsm":
            return E.MomentumIterativeMethod(clf, norm=norm, eps=s.eps, eps_step=s.step_size, max_iter=s.steps,
                                             decay=s.params["decay"], verbose=False, **common)
        if s.key == "apgd":
            return E.AutoProjectedGradientDescent(clf, norm=norm, eps=s.eps, eps_step=s.step_size, max_iter=s.steps,
                                                  nb_random_init=1, loss_type="cross_entropy", verbose=False,
                                                  **common)
        if s.key == "deepfool":
            p = s.params
            return E.DeepFool(clf, max_iter=p["steps"], epsilon=p["overshoot"], nb_grads=p["candidates"],
                              verbose=False, **common)
        if s.key == "cw":
            p = s.params
            return E.CarliniL2Method(clf, confidence=p["confidence"], learning_rate=p["lr"],
                                     binary_search_steps=p["binary_search_steps"], max_iter=p["steps"],
                                     initial_const=p["initial_const"], verbose=False, **common)
        raise Skip("not offered")

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        np.random.seed(seed)  # ART draws random starts from numpy's global generator
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        attack = build(model, tuple(x.shape[1:]), classes)
        out = attack.generate(x=x.cpu().numpy(), y=y.cpu().numpy())
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    return run


def foolbox_runner(s: Setting, n: int, device: torch.device) -> Runner:
    import foolbox as fb

    A = fb.attacks
    if s.key == "fgsm":
        attack: Any = A.LinfFastGradientAttack(random_start=False)
    elif s.key == "bim":
        attack = A.LinfBasicIterativeAttack(abs_stepsize=s.step_size, steps=s.steps, random_start=False)
    elif s.key == "pgd-linf":
        attack = A.LinfPGD(abs_stepsize=s.step_size, steps=s.steps, random_start=True)
    elif s.key == "pgd-l2":
        attack = A.L2PGD(abs_stepsize=s.step_size, steps=s.steps, random_start=True)
    elif s.key == "mifgsm":
        attack = A.LinfMomentumIterativeFastGradientMethod(momentum=s.params["decay"], abs_stepsize=s.step_size,
                                                            steps=s.steps)
    elif s.key == "deepfool":
        p = s.params
        attack = A.L2DeepFoolAttack(steps=p["steps"], candidates=p["candidates"], overshoot=p["overshoot"])
    elif s.key == "cw":
        p = s.params
        attack = A.L2CarliniWagnerAttack(binary_search_steps=p["binary_search_steps"], steps=p["steps"],
                                         stepsize=p["lr"], confidence=p["confidence"],
                                         initial_const=p["initial_const"], abort_early=True)
    else:
        raise Skip("not offered")

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        torch.manual_seed(seed)
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        _, clipped, _ = attack(fmodel, x, y, epsilons=s.eps)
        return clipped

    return run


def cleverhans_runner(s: Setting, n: int, device: torch.device) -> Runner:
    # Only the PyTorch attacks are imported: the package's other modules need TensorFlow/JAX.
    from cleverhans.torch.attacks.carlini_wagner_l2 import carlini_wagner_l2
    from cleverhans.torch.attacks.fast_gradient_method import fast_gradient_method
    from cleverhans.torch.attacks.projected_gradient_descent import projected_gradient_descent

    norm = np.inf if s.norm == "linf" else 2

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        torch.manual_seed(seed)
        if s.key == "fgsm":
            return fast_gradient_method(model, x, s.eps, norm, clip_min=0.0, clip_max=1.0, y=y)
        if s.key in ("bim", "pgd-linf", "pgd-l2"):
            return projected_gradient_descent(model, x, s.eps, s.step_size, s.steps, norm, clip_min=0.0, clip_max=1.0,
                                              y=y, rand_init=s.key != "bim", sanity_checks=False)
        if s.key == "cw":
            p = s.params
            with torch.no_grad():
                classes = int(model(x[:1]).shape[1])
            return carlini_wagner_l2(model, x, classes, y=y, lr=p["lr"], confidence=p["confidence"], clip_min=0.0,
                                     clip_max=1.0, initial_const=p["initial_const"],
                                     binary_search_steps=p["binary_search_steps"], max_iterations=p["steps"])
        raise Skip("not offered")

    if s.key not in ("fgsm", "bim", "pgd-linf", "pgd-l2", "cw"):
        raise Skip("not offered")
    return run


RUNNERS: dict[str, Callable[[Setting, int, torch.device], Runner]] = {
    "advlab": advlab_runner, "torchattacks": torchattacks_runner, "art": art_runner,
    "foolbox": foolbox_runner, "cleverhans": cleverhans_runner,
}


# ---------------------------------------------------------------- measurement


def physical_limit(
    model: nn.Module, x: Tensor, y: Tensor, k: int, moved: Tensor | None = None, clean_start: bool = True
) -> Callable[[], None]:
    """``k`` forward+backward passes w.r.t. the input on the batch: the least work a k-step attack does.

    The passes are made where such an attack makes them: the first at the clean batch ``x`` (``clean_start``)
    and the others at ``moved``, the batch moved inside the ball. The speed of a pass depends on the data
    (a forward pass at MNIST's clean images, with their many exact zeros, measured about 10 % faster than at
    perturbed ones), so a limit timed on the clean batch alone would be lower than any attack can reach."""

    def run() -> None:
        for i in range(k):
            z = x if moved is None or (i == 0 and clean_start) else moved
            xg = z.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            torch.autograd.grad(loss, xg)

    return run


def moved_batch(x: Tensor, eps: float, seed: int) -> Tensor:
    """``x`` plus uniform noise in ``[-eps, eps]``, clipped to [0, 1]: a batch of points inside the ball."""
    g = torch.Generator().manual_seed(seed)
    noise = (2 * torch.rand(x.shape, generator=g) - 1).to(x.device, x.dtype)
    return (x + eps * noise).clamp(0, 1)


def verdicts(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
    """What a peer's caller still has to compute to know which examples were broken, and which were
    correct to begin with: predictions at the clean and at the adversarial batch (advlab's call returns
    both already)."""
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        still = model(x_adv.reshape(x.shape)).argmax(1) == y
    return clean, still


def forward_only(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def judge(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, s: Setting) -> dict[str, Any]:
    """Library-independent verdicts on ``x_adv``."""
    x_adv = x_adv.detach().to(x.device, x.dtype).reshape(x.shape)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        still = model(x_adv).argmax(1) == y
    delta = (x_adv - x).flatten(1)
    l2, linf = delta.norm(dim=1), delta.abs().amax(dim=1)
    fooled = clean & ~still
    # Median over the clean-correct examples with failures counted as infinitely far (None when more than
    # half failed): unlike the median over successes alone, it compares attacks with different success rates.
    radius = torch.where(fooled, l2, torch.full_like(l2, math.inf))[clean]
    med_all = float(radius.sort().values[(len(radius) - 1) // 2]) if len(radius) else math.inf
    out: dict[str, Any] = {
        "median_l2_all": med_all if math.isfinite(med_all) else None,
        "robust_accuracy": float((clean & still).double().mean()),
        "success_rate": float(fooled.double().sum() / clean.double().sum().clamp(min=1)),
        "median_l2": float(l2[fooled].median()) if bool(fooled.any()) else None,
        "median_linf": float(linf[fooled].median()) if bool(fooled.any()) else None,
        "out_of_bounds": bool((x_adv < -1e-6).any() or (x_adv > 1 + 1e-6).any()),
    }
    if s.eps is not None:
        size = linf if s.norm == "linf" else l2
        out["outside_ball"] = int((size > s.eps * (1 + 1e-4) + 1e-6).sum())
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from advlab.data import load_dataset
    from advlab.models import unchecked_inputs

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model, ckpt = benchmark_model(work_dir, Path(args.data_root), checkpoint=args.checkpoint,
                                  train_size=args.train_size, epochs=args.epochs, log=log)
    model = model.to(device).eval()
    for p in model.parameters():  # every library attacks a frozen model; gradients w.r.t. inputs only
        p.requires_grad_(False)
    x_all, y_all = load_dataset("mnist", "test", root=args.data_root)
    settings = make_settings(args.eps_linf, args.eps_l2, args.steps)
    chosen = [k.strip() for k in args.attacks.split(",")] if args.attacks else list(settings)
    unknown = [k for k in chosen if k not in settings]
    if unknown:
        raise SystemExit(f"unknown attacks {unknown}; choose from {', '.join(settings)}")
    libs = ["advlab"] + ([p.strip() for p in args.peers.split(",") if p.strip()] if args.peers is not None
                         else list(PEERS))
    bad = [p for p in libs if p not in LIBRARIES]
    if bad:
        raise SystemExit(f"unknown peers {bad}; choose from {', '.join(PEERS)}")

    installed: dict[str, str | None] = {}
    for lib in libs:
        installed[lib] = version_of(DISTRIBUTIONS[lib])
    if installed.get("torchattacks") and version_of("torchvision") is None:
        log("torchattacks is installed without torchvision (installed with --no-deps); it imports without it")
    info = machine_info()
    from advlab.models import load_checkpoint_metadata

    meta = load_checkpoint_metadata(ckpt)
    info["model"] = {"name": meta["model"]["name"], "dataset": meta.get("dataset"), "metrics": meta.get("metrics"),
                     "hash": meta["weights"]["content_hash"]}
    info.update({"device": str(device), "checkpoint": str(ckpt), "libraries": installed,
                 "n": args.n, "n_min_norm": args.n_min_norm, "repeats": args.repeats})
    records: list[dict[str, Any]] = []
    passes: dict[str, float] = {}
    report = {"machine": info, "passes": passes, "settings": {k: asdict(settings[k]) for k in chosen},
              "records": records}

    with unchecked_inputs(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_main, y_main = x_all[: args.n].to(device), y_all[: args.n].to(device)
        for size in {args.n, args.n_min_norm}:  # warm up kernels and allocator for both batch shapes
            timed(physical_limit(model, x_all[:size].to(device), y_all[:size].to(device), 3), device)
        passes["forward"] = min(timed(forward_only(model, x_main), device)[0] for _ in range(5))
        passes["forward_backward"] = min(timed(physical_limit(model, x_main, y_main, 1), device)[0] for _ in range(5))
        log(f"n={args.n}: forward {passes['forward'] * 1e3:.1f} ms, forward+backward "
            f"{passes['forward_backward'] * 1e3:.1f} ms per batch ({torch.get_num_threads()} threads)")
        for key in chosen:
            s = settings[key]
            n = args.n_min_norm if s.min_norm else args.n
            x, y = x_all[:n].to(device), y_all[:n].to(device)
            cells: dict[str, dict[str, Any]] = {}
            runners: dict[str, Runner] = {}
            # C&W also runs with advlab's own defaults (fewer iterations, larger learning rate): what users get.
            row_libs = [*libs, "advlab-defaults"] if key == "cw" and "advlab" in libs else list(libs)
            if key in EARLY_STOP and "advlab" in libs:  # the same attack, each example stopped once broken
                row_libs.append("advlab-early-stop")
            for lib in row_libs:
                dist = "advlab" if lib.startswith("advlab") else lib
                cell: dict[str, Any] = {"attack": key, "library": lib, "n": n, "times": [],
                                        "rounds": [None] * args.repeats, "version": installed[dist]}
                cells[lib] = cell
                if installed[dist] is None:
                    cell["status"] = "not installed"
                    continue
                try:
                    if lib == "advlab-defaults":
                        runners[lib] = advlab_runner(replace(s, params={}), n, device)
                        continue
                    if lib == "advlab-early-stop":
                        runners[lib] = advlab_runner(replace(s, params={**s.params, "early_stop": True}), n, device)
                        continue
                    runners[lib] = RUNNERS[lib](s, n, device)
                except Skip as why:
                    cell["status"] = str(why)
                except Exception as err:  # an import failure of an optional peer must not stop the run
                    cell["status"] = f"unusable: {type(err).__name__}: {err}"[:200]
            limit_cell: dict[str, Any] = {"attack": key, "library": "limit", "n": n, "times": [],
                                          "rounds": [None] * args.repeats, "k": s.steps,
                                          "clean_start": s.clean_start}
            moved = moved_batch(x, args.eps_linf, args.seed)
            order = list(runners)
            for rep in range(args.repeats):
                if s.fixed_cost:
                    limit_cell["rounds"][rep] = timed(
                        physical_limit(model, x, y, s.steps, moved, s.clean_start), device)[0]
                    limit_cell["times"].append(limit_cell["rounds"][rep])
                for lib in order[rep % len(order):] + order[: rep % len(order)] if order else []:
                    cell = cells[lib]
                    if cell.get("status") or cell.get("skip") or (
                        cell["times"] and sum(cell["times"]) > args.max_repeat_seconds
                    ):
                        continue
                    try:
                        with deadline(args.cell_timeout):
                            seconds, x_adv = timed(functools.partial(runners[lib], model, x, y, args.seed), device)
                    except CellTimeout:
                        log(f"  {key:9s} {lib:12s} run {rep + 1}: stopped after {args.cell_timeout:g} s")
                        if cell["times"]:  # finished before: keep those runs, stop repeating
                            cell["status_note"] = f"a later run stopped after {args.cell_timeout:g} s"
                            cell["rounds"][rep] = args.cell_timeout  # a lower bound, for paired ratios
                            cell["skip"] = True
                        else:
                            cell["status"] = f"stopped after {args.cell_timeout:g} s"
                            cell["timed_out"] = args.cell_timeout
                        continue
                    except Exception as err:
                        cell["status"] = f"error: {type(err).__name__}: {err}"[:200]
                        if args.verbose:
                            traceback.print_exc()
                        continue
                    cell["times"].append(seconds)
                    cell["rounds"][rep] = seconds
                    if lib not in OWN_ROWS:  # peers return bare examples: time what it takes to judge them
                        cell.setdefault("verdict_rounds", [None] * args.repeats)[rep] = timed(
                            functools.partial(verdicts, model, x, y, x_adv), device)[0]
                    if "verdict" not in cell:
                        cell["verdict"] = judge(model, x, y, x_adv, s)
                    log(f"  {key:9s} {lib:12s} run {rep + 1}: {seconds:7.2f} s")
            if not s.clean_start and args.strength_seeds > 1:
                # Random starts: one run's robust accuracy moves by an image or two with the seed, so the strength
                # comparison averages untimed runs at other seeds.
                for lib, cell in cells.items():
                    if cell.get("verdict") and lib in runners:
                        accs = [cell["verdict"]["robust_accuracy"]]
                        for seed in range(args.seed + 1, args.seed + args.strength_seeds):
                            x_adv = runners[lib](model, x, y, seed)
                            accs.append(judge(model, x, y, x_adv, s)["robust_accuracy"])
                        cell["verdict"]["robust_accuracy_seeds"] = accs
                        cell["verdict"]["robust_accuracy_mean"] = statistics.fmean(accs)
            for cell in [*cells.values(), limit_cell]:
                if cell["times"]:
                    cell["best"] = min(cell["times"])
                    cell["examples_per_second"] = n / cell["best"]
                    cell["judged_rounds"] = judged_rounds(cell)
                    cell["best_judged"] = min(t for t in cell["judged_rounds"] if t is not None)
                records.append(cell)
            if s.fixed_cost and limit_cell["times"]:
                for cell in cells.values():
                    if cell.get("best"):
                        cell["ratio_to_limit"] = paired_ratio(cell["rounds"], limit_cell["rounds"])
            (work_dir / "attacks.partial.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


# ---------------------------------------------------------------- report


def judged_rounds(cell: dict[str, Any]) -> list[float | None]:
    """Per round: the run's time plus, for a peer, the time of its verdicts (advlab's run includes them)."""
    extra = cell.get("verdict_rounds") or [0.0] * len(cell["rounds"])
    return [None if t is None or v is None else t + v for t, v in zip(cell["rounds"], extra, strict=True)]


def paired_ratio(a: list[float | None], b: list[float | None]) -> float | None:
    """Median over repeats of ``a[i] / b[i]``, each pair timed back to back (robust to drifting load)."""
    if len(a) != len(b):
        return None
    ratios = [u / v for u, v in zip(a, b, strict=True) if u and v]
    return statistics.median(ratios) if ratios else None


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _radius(v: dict[str, Any]) -> float:
    """Median L2 with failures as infinity (``inf`` when more than half of the images were not broken)."""
    return math.inf if v.get("median_l2_all") is None else float(v["median_l2_all"])


def _fmt_radius(v: dict[str, Any]) -> str:
    return "∞" if v.get("median_l2_all") is None else f"{v['median_l2_all']:.3f}"


def _speed(peer: dict[str, Any], own: dict[str, Any]) -> float:
    """How many times faster ``own`` is than ``peer``, both with verdicts, paired by round."""
    paired = paired_ratio(peer.get("judged_rounds") or peer.get("rounds", []),
                          own.get("judged_rounds") or own.get("rounds", []))
    return paired or peer.get("best_judged", peer["best"]) / own.get("best_judged", own["best"])


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The issue's speed targets, each as ``(target, evidence, met)`` (``None``: not measurable)."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in report["records"]:
        by.setdefault(r["attack"], {})[r["library"]] = r
    out: list[tuple[str, str, bool | None]] = []
    for key in ("pgd-linf", "pgd-l2", "bim"):
        adv = by.get(key, {}).get("advlab", {})
        if adv.get("ratio_to_limit"):
            ratio = adv["ratio_to_limit"]
            out.append((f"{key}: ≤ 1.15× physical limit", f"{ratio:.2f}×", ratio <= 1.15))
    for key, libs in by.items():
        peers = [r for lib, r in libs.items() if lib not in OWN_ROWS and r.get("best")]
        for own in ("advlab", "advlab-defaults", "advlab-early-stop"):
            if own not in libs or not peers:
                continue
            adv = libs[own]
            who = {"advlab": "", "advlab-defaults": " (advlab defaults)",
                   "advlab-early-stop": " (advlab, early_stop=True)"}[own]
            if not adv.get("best"):
                out.append((f"{key}{who}: as fast as the fastest peer at the same strength",
                            f"advlab: {adv.get('status', 'no run')}", None))
                continue
            fastest = min(peers, key=lambda r: r.get("best_judged", r["best"]))
            va, vp = adv["verdict"], fastest["verdict"]
            speed = _speed(fastest, adv)
            bare = paired_ratio(fastest.get("rounds", []), adv.get("rounds", [])) or fastest["best"] / adv["best"]
            if report["settings"][key]["eps"] is None:
                strong = _radius(va) <= _radius(vp) * 1.01
                detail = f"median L2 (failures = ∞) {_fmt_radius(va)} vs {_fmt_radius(vp)}"
            else:
                key_acc = "robust_accuracy_mean" if "robust_accuracy_mean" in va and "robust_accuracy_mean" in vp \
                    else "robust_accuracy"
                strong = va[key_acc] <= vp[key_acc] + 0.005
                seeds = f" (mean of {len(va['robust_accuracy_seeds'])} seeds)" if key_acc != "robust_accuracy" else ""
                detail = f"robust accuracy{seeds} {_pct(va[key_acc])}% vs {_pct(vp[key_acc])}%"
            out.append((f"{key}{who}: as fast as the fastest peer ({fastest['library']}) at the same strength",
                        f"{speed:.2f}× its speed with verdicts ({bare:.2f}× bare); {detail}",
                        speed >= 1.0 and strong))
    cw = by.get("cw", {})
    adv = cw.get("advlab-defaults", {}) if cw.get("advlab-defaults", {}).get("best") else cw.get("advlab", {})
    for lib, r in cw.items():
        if lib in OWN_ROWS or not adv.get("best"):
            continue
        if r.get("timed_out"):
            speed = r["timed_out"] / adv["best"]
            out.append((f"cw: ≥ 5× faster than {lib} at equal or smaller median L2",
                        f"> {speed:.2f}× ({lib} stopped after {r['timed_out']:g} s); norms not compared",
                        True if speed >= 5 else None))
            continue
        if not r.get("best"):
            continue
        speed = _speed(r, adv)
        smaller = _radius(adv["verdict"]) <= _radius(r["verdict"]) * 1.01
        out.append((f"cw: ≥ 5× faster than {lib} at equal or smaller median L2",
                    f"{adv['library']}: {speed:.2f}×; median L2 (failures = ∞) {_fmt_radius(adv['verdict'])} vs "
                    f"{_fmt_radius(r['verdict'])}", speed >= 5 and smaller))
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = ", ".join(f"{v:.1f}" for v in m["load_average"] or [])
    libraries = ", ".join(f"{k} {v or 'not installed'}" for k, v in m["libraries"].items())
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['logical_cores']} logical cores, shared with other work; load "
        f"average at start {load}), device {m['device']}, torch {m['torch']}, {m['torch_threads']} intra-op "
        f"threads, advlab at commit {m.get('commit')}. Libraries: {libraries}. glibc malloc: "
        + (", ".join(f"{k}={v}" for k, v in m["malloc"].items()) if any((m.get("malloc") or {}).values())
           else "defaults") + ".",
        (f"Model: {m['model']['name']} trained on {m['model']['dataset']} (test accuracy "
         f"{100 * (m['model']['metrics'] or {}).get('test_accuracy', float('nan')):.2f}%). " if m.get("model") else "")
        + f"MNIST test images: the first {m['n']} (minimum-norm attacks: the first {m['n_min_norm']}) as one batch; "
        f"time: best of {m['repeats']} interleaved runs (fewer when runs took over the repeat budget: see note); "
        "× limit and speed ratios: median over repeats of ratios of back-to-back runs; the limit's passes are "
        "made at the clean batch (first pass of attacks without a random start) and at a batch moved inside "
        "the ball. \"With verdicts\": a peer's time plus the two forward passes its caller needs to know "
        "which examples were correct and which were broken (advlab's result holds both). "
        f"One forward pass of the {m['n']}-image batch: {report['passes']['forward'] * 1e3:.1f} ms; one "
        f"forward+backward w.r.t. the input: {report['passes']['forward_backward'] * 1e3:.1f} ms.",
        "",
    ]
    header = ["attack", "library", "time (s)", "with verdicts (s)", "examples/s", "× limit", "robust acc (%)",
              "success (%)",
              "median L2 (successes)", "median L2 (failures = ∞)", "note"]
    rows = []
    for r in report["records"]:
        s = report["settings"][r["attack"]]
        if r["library"] == "limit":
            if r.get("best"):
                rows.append([s["title"], f"*limit: {r['k']} fwd+bwd*", f"{r['best']:.3f}", "",
                             f"{r['examples_per_second']:.0f}", "1.00", "", "", "", "", ""])
            continue
        v = r.get("verdict", {})
        note = r.get("status", "") or r.get("status_note", "")
        if v.get("out_of_bounds"):
            note += " outside bounds!"
        if v.get("outside_ball"):
            note += f" {v['outside_ball']} outside the ball!"
        if r.get("times") and len(r["times"]) < report["machine"]["repeats"]:
            note += f" {len(r['times'])} run(s)"
        rows.append([
            s["title"], r["library"], f"{r['best']:.3f}" if r.get("best") else "–",
            f"{r['best_judged']:.3f}" if r.get("best_judged") else "–",
            f"{r['examples_per_second']:.1f}" if r.get("best") else "–",
            f"{r['ratio_to_limit']:.2f}" if r.get("ratio_to_limit") else "",
            (_pct(v.get("robust_accuracy")) + (f" (mean {_pct(v['robust_accuracy_mean'])})"
                                               if "robust_accuracy_mean" in v else "")) if v else "–",
            _pct(v.get("success_rate")) if v else "–",
            f"{v['median_l2']:.3f}" if v.get("median_l2") is not None else "–",
            _fmt_radius(v) if v and s["eps"] is None else "", note.strip(),
        ])
    lines.append(markdown_table(header, rows))
    lines += ["", markdown_table(["target", "measured", "met"], [
        [t, e, {True: "yes", False: "**no**", None: "–"}[ok]] for t, e, ok in targets(report)
    ])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                        help="Cache for the model and the results (default: %(default)s).")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="Folder holding mnist/.")
    parser.add_argument("--checkpoint", type=Path, default=None, help="Use this checkpoint instead of training.")
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--attacks", default=None, help="Comma list (default: all): " + ", ".join(
        make_settings(0.1, 1.0, 20)))
    parser.add_argument("--peers", default=None, help="Comma list (default: all): " + ", ".join(PEERS))
    parser.add_argument("--n", type=int, default=64, help="Test images for fixed-budget attacks (one batch).")
    parser.add_argument("--n-min-norm", type=int, default=8, help="Test images for DeepFool and C&W.")
    parser.add_argument("--eps-linf", type=float, default=0.1)
    parser.add_argument("--eps-l2", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=10, help="Steps of BIM, PGD, MI-FGSM and APGD.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strength-seeds", type=int, default=1,
                        help="Seeds whose robust accuracy is averaged for attacks with a random start (untimed runs).")
    parser.add_argument("--max-repeat-seconds", type=float, default=30.0,
                        help="Do not repeat a library's run once its runs took this long in total.")
    parser.add_argument("--cell-timeout", type=float, default=60.0, help="Abandon a single run after this long.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine 2 threads ran 3x slower).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown output (default: WORK_DIR/attacks.md).")
    parser.add_argument("--default-malloc", action="store_true",
                        help="Keep glibc malloc's defaults (by default the script re-runs itself with freed memory "
                             "kept in the process: see common.STEADY_MALLOC).")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--render", type=Path, default=None, help="Only re-render the table of a results JSON.")
    args = parser.parse_args(argv)
    if argv is None and not args.default_malloc and args.render is None:
        ensure_steady_malloc(sys.argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return
    report = run_benchmark(args)
    report["settings_args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    text = render(report)
    work = Path(args.work_dir)
    (work / "attacks.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out = args.out or work / "attacks.md"
    out.write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} and {work / 'attacks.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
