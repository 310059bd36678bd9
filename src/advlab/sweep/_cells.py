"""Cells of a sweep: :func:`expand` turns a :class:`~advlab.sweep.Spec` into :class:`Cell` objects, and
:func:`run_cell` computes one cell's :class:`~advlab.store.Record` from its config alone.

A cell's ``config`` holds everything that determines its result: the kind, the dataset, the model (a
trained model's full recipe, defense and options, or a checkpoint's weights hash), the suite definition or
the attack's full hyper-parameters, the norm and budgets, the number of points and split, the seed, the
batch size, the device and the number of torch threads. Its ``key`` is :func:`advlab.store.config_hash`
of the config. A cell that evaluates a model the sweep trains names the train cell's key
(``config["model"]["train_key"]``) and finds its checkpoint at ``WORKDIR/checkpoints/<train key[:16]>``.

Determinism: every random choice is drawn from ``torch.Generator`` objects seeded with the cell's seed
(training: :func:`advlab.train.train_model` seeds its own), and torch's intra-op threads are set to
``config["threads"]`` for the cell's duration in whatever process runs it (results on CPU are bitwise
reproducible for a fixed number of threads). Two runs of one config give records whose
:meth:`~advlab.store.Record.identity` is equal, whichever executor ran them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advlab.sweep._spec import _plain

if TYPE_CHECKING:
    from torch import nn

    from advlab.store import Record
    from advlab.sweep._spec import ModelEntry, Spec

__all__ = ["Cell", "checkpoint_dir", "expand", "run_cell"]

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Cell:
    """One unit of a sweep: a pure function of ``config`` to a :class:`~advlab.store.Record`.

    Attributes:
        kind: ``"train"``, ``"robustness"``, ``"attack"``, ``"blackbox"`` or ``"transfer"``.
        config: the full configuration (plain JSON), the record's ``config``.
        key: :func:`advlab.store.config_hash` of ``config``, the record's key in the store.
        dependencies: keys of the train cells whose checkpoints this cell reads (run before it).
        label: a short human-readable name, e.g. ``"attack fgsm linf / standard / digits"``.
        checkpoints: weights hash -> folder of the saved checkpoints (``checkpoint = ...`` models) the cell
            reads; where a file lies is not part of the config, its weights' hash is.
    """

    kind: str
    config: dict[str, Any]
    key: str
    dependencies: tuple[str, ...] = ()
    label: str = ""
    checkpoints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Instance:
    """A model on a dataset, as the evaluation cells see it."""

    name: str
    dataset: str
    model: dict[str, Any]
    dependencies: tuple[str, ...]
    checkpoints: Mapping[str, str]


def _trained_model(m: ModelEntry, dataset: str) -> dict[str, Any]:
    """The full description of a model the sweep trains on ``dataset``: recipe, options, defense resolved."""
    from advlab.models import is_sklearn_model
    from advlab.train import get_recipe

    assert m.architecture is not None
    overrides = dict(m.recipe)
    defense: dict[str, Any] | None = None
    if is_sklearn_model(m.architecture):  # fitted with its own options, not trained with a recipe
        return {"name": m.name, "architecture": m.architecture, "recipe": None,
                "model_options": _plain(dict(m.options or {})), "n_train": m.n_train, "defense": None}
    if m.defense is None:
        recipe = get_recipe(m.architecture, dataset, **overrides)
        options = dict(m.options or {})
    else:
        from advlab.defenses import defense_recipe, defense_spec

        spec = defense_spec(m.defense)
        recipe = defense_recipe(m.defense, m.architecture, dataset, **overrides)
        options = dict(m.options) if m.options is not None else spec.recommended_model_options(m.architecture, dataset)
        config = spec.make_config(dict(m.defense_options))
        defense = {"name": m.defense, "eps": m.defense_eps, "norm": m.defense_norm or spec.norms[0],
                   "options": {} if config is None else _plain(dataclasses.asdict(config)), "held_out": m.held_out}
    return {"name": m.name, "architecture": m.architecture, "recipe": _plain(recipe.to_dict()),
            "model_options": _plain(options), "n_train": m.n_train, "defense": defense}


def expand(spec: Spec, *, device: str = "cpu", seed: int | None = None) -> list[Cell]:
    """The cells of ``spec`` (see :meth:`Spec.cells`): train cells (dataset x model to train), then evaluation
    cells (dataset x model x evaluation), black-box cells and transfer cells; cells with equal configs once.

    Example:
        >>> from advlab.sweep import parse_spec
        >>> spec = parse_spec('[[dataset]]\\nname = "digits"\\n[[model]]\\nname = "a"\\narchitecture = "softmax"\\n'
        ...                   '[[evaluation]]\\nattack = "fgsm"\\neps = [0.1, 0.2]\\n')
        >>> train, attack = spec.cells()
        >>> attack.dependencies == (train.key,), attack.config["eps"]
        (True, [0.1, 0.2])
    """
    from advlab.store import config_hash

    s = spec.sweep
    base = {"seed": s.seed if seed is None else seed, "threads": s.threads, "device": str(device)}
    cells: list[Cell] = []
    instances: list[_Instance] = []

    def add(kind: str, config: dict[str, Any], deps: tuple[str, ...], label: str,
            checkpoints: Mapping[str, str] | None = None) -> Cell:
        cell = Cell(kind=kind, config=config, key=config_hash(config), dependencies=deps, label=label,
                    checkpoints=dict(checkpoints or {}))
        cells.append(cell)
        return cell

    for m in spec.models:
        if m.architecture is not None:
            for dataset in m.datasets or spec.datasets:
                model = _trained_model(m, dataset)
                train = add("train", {"kind": "train", "dataset": dataset, "model": model, **base}, (),
                            f"train {m.name} / {dataset}")
                instances.append(_Instance(m.name, dataset, {**model, "train_key": train.key}, (train.key,), {}))
        else:
            assert m.checkpoint_hash is not None and m.checkpoint_dataset is not None
            model = {"name": m.name, "architecture": m.checkpoint_model, "checkpoint_hash": m.checkpoint_hash,
                     "defense": None if m.checkpoint_defense is None else dict(m.checkpoint_defense)}
            instances.append(_Instance(m.name, m.checkpoint_dataset, model, (),
                                       {m.checkpoint_hash: str(m.checkpoint)}))

    common = {"split": s.split, "n": s.n, "batch_size": s.batch_size}
    for e in spec.evaluations:
        for inst in instances:
            if e.models is not None and inst.name not in e.models:
                continue
            head = {"dataset": inst.dataset, "model": inst.model, **common, **base}
            if e.suite is not None:
                config = {"kind": "robustness", **head, "suite": e.suite,
                          "suite_definition": dict(e.suite_config or {}), "norm": e.norm,
                          "eps": list(e.eps), "checks": e.checks, "active_test": e.active_test,
                          "adaptive": list(e.adaptive)}
                label = f"robustness {e.suite} {e.norm} / {inst.name} / {inst.dataset}"
                add("robustness", config, inst.dependencies, label, inst.checkpoints)
            else:
                config = {"kind": "attack", **head, "attack": e.attack, "params": dict(e.params), "norm": e.norm,
                          "eps": list(e.eps), "targets": e.targets}
                label = f"attack {e.attack} {e.norm} / {inst.name} / {inst.dataset}"
                add("attack", config, inst.dependencies, label, inst.checkpoints)

    for b in spec.blackbox:
        for inst in instances:
            if inst.name != b.model:
                continue
            config = {"kind": "blackbox", "dataset": inst.dataset, "model": inst.model, "split": s.split,
                      "n": b.n or s.n, "batch_size": s.batch_size, **base, "attack": b.attack,
                      "attack_options": None if b.attack_options is None else dict(b.attack_options), "eps": b.eps,
                      "norm": b.norm, "substitute": b.substitute, "seed_size": b.seed_size, "rounds": b.rounds,
                      "epochs": b.epochs, "max_queries": b.max_queries, "options": dict(b.options)}
            add("blackbox", config, inst.dependencies, f"blackbox {b.attack} / {inst.name} / {inst.dataset}",
                inst.checkpoints)

    for t in spec.transfer:
        datasets = list(dict.fromkeys(inst.dataset for inst in instances))
        for dataset in datasets:
            members = [i for i in instances if i.dataset == dataset and (t.models is None or i.name in t.models)]
            if not members:
                continue
            config = {"kind": "transfer", "dataset": dataset, "models": [i.model for i in members], **common, **base,
                      "attack": t.attack, "params": dict(t.params), "eps": t.eps, "norm": t.norm}
            deps = tuple(dict.fromkeys(k for i in members for k in i.dependencies))
            ckpts = {h: p for i in members for h, p in i.checkpoints.items()}
            add("transfer", config, deps, f"transfer {t.attack} / {', '.join(i.name for i in members)} / {dataset}",
                ckpts)

    unique: dict[str, Cell] = {}
    for cell in cells:
        unique.setdefault(cell.key, cell)
    return list(unique.values())


# ------------------------------------------------------------------------------------------------ running


def checkpoint_dir(workdir: str | os.PathLike[str], train_key: str) -> Path:
    """Where the train cell ``train_key`` saves its checkpoint: ``WORKDIR/checkpoints/<key[:16]>``."""
    return Path(workdir) / CHECKPOINTS / train_key[:16]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    from advlab.train.run import _num_threads

    with _num_threads(int(n)):
        yield


def run_cell(config: Mapping[str, Any], *, workdir: str | os.PathLike[str],
             checkpoints: Mapping[str, str] | None = None, data_root: str | os.PathLike[str] | None = None) -> Record:
    """Computes the record of one cell from its ``config`` (see :class:`Cell`).

    Args:
        config: the cell's configuration (``Cell.config``).
        workdir: the sweep's working folder; train cells save their checkpoints under ``WORKDIR/checkpoints``
            (atomically: written to a temporary folder, then renamed) and the others read them there.
        checkpoints: weights hash -> folder of the saved checkpoints the config names (``Cell.checkpoints``).
        data_root: folder of the dataset files (see :func:`advlab.load_dataset`).

    Returns:
        The :class:`~advlab.store.Record` (``key`` = ``config_hash(config)``), not yet stored.

    Raises:
        ValueError: a config of an unknown kind, or a checkpoint whose weights are not the ones the config
            names. FileNotFoundError: a checkpoint or the data are missing.
    """
    from advlab.store import now_iso

    cfg = dict(config)
    kind = cfg.get("kind")
    runners: dict[str, Callable[..., dict[str, Any]]] = {
        "train": _run_train, "robustness": _run_robustness, "attack": _run_attack, "blackbox": _run_blackbox,
        "transfer": _run_transfer,
    }
    if kind not in runners:
        raise ValueError(f"unknown cell kind {kind!r}; valid kinds: {', '.join(runners)}")
    started = now_iso()
    t0 = time.perf_counter()
    with _threads(cfg["threads"]):
        fields = runners[str(kind)](cfg, Path(workdir), dict(checkpoints or {}), data_root)
    from advlab.store import Record

    fields.setdefault("cost", {})
    fields["cost"].setdefault("seconds", time.perf_counter() - t0)
    for name in ("metrics", "cost", "checks"):
        if name in fields:
            fields[name] = gather_timings(fields[name])
    return Record.for_config(str(kind), cfg, started=started, finished=now_iso(), seeds={"seed": cfg["seed"]},
                             **fields)


def gather_timings(value: Any) -> Any:
    """``value`` with every number under a key ending in ``_seconds`` moved into a ``seconds`` table beside it
    (``{"train_seconds": 0.1, "loss": 2}`` -> ``{"loss": 2, "seconds": {"train": 0.1}}``; a number already
    under ``seconds`` there goes to ``seconds.total``), recursively: wall times differ between two runs of
    one cell, and :meth:`Record.identity` leaves out what is under ``seconds``.

    Example:
        >>> gather_timings({"seconds": 3.0, "rows": [{"train_seconds": 0.1, "loss": 2}]})
        {'seconds': 3.0, 'rows': [{'loss': 2, 'seconds': {'train': 0.1}}]}
    """
    if isinstance(value, list):
        return [gather_timings(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str) and key.endswith("_seconds") and (item is None or isinstance(item, (int, float))):
            timings[key[: -len("_seconds")]] = item
        else:
            out[key] = gather_timings(item)
    if timings:
        current = out.get("seconds")
        if isinstance(current, dict):
            out["seconds"] = {**current, **timings}
        else:
            out["seconds"] = timings if current is None else {"total": current, **timings}
    return out


def _versions() -> dict[str, str]:
    from advlab._provenance import versions

    return versions()


def _model_path(model: Mapping[str, Any], workdir: Path, checkpoints: Mapping[str, str]) -> Path:
    if "train_key" in model:
        path = checkpoint_dir(workdir, str(model["train_key"]))
        if not path.is_dir():
            raise FileNotFoundError(
                f"the checkpoint of model {model['name']!r} (train cell {str(model['train_key'])[:16]}) is missing "
                f"at {path}; remove that train record from the store (or use a new store) to train it again")
        return path
    digest = str(model["checkpoint_hash"])
    if digest not in checkpoints:
        raise ValueError(f"no folder given for the checkpoint of model {model['name']!r} (weights {digest[:16]})")
    return Path(checkpoints[digest])


def _load(config: Mapping[str, Any], model: Mapping[str, Any], workdir: Path, checkpoints: Mapping[str, str],
          data_root: Any) -> Any:
    """The model (checked against the weights hash the config names) and its dataset split."""
    from advlab.models import load_checkpoint_data

    path = _model_path(model, workdir, checkpoints)
    loaded = load_checkpoint_data(path, data=config["dataset"], split=config["split"], data_root=data_root,
                                  device=config["device"])
    want = model.get("checkpoint_hash")
    got = loaded.meta.get("weights", {}).get("content_hash")
    if want is not None and got != want:
        raise ValueError(f"the checkpoint at {path} has weights {str(got)[:16]}, not the {str(want)[:16]} of model "
                         f"{model['name']!r} in the spec; it changed since the spec was read: run the sweep again")
    return loaded


def _generator(seed: int) -> Any:
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def _png(write: Callable[[Path], object]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="advlab-sweep-") as tmp:
        path = Path(tmp) / "image.png"
        write(path)
        return path.read_bytes()


def _run_train(config: dict[str, Any], workdir: Path, checkpoints: Mapping[str, str], data_root: Any) -> dict[str, Any]:
    from advlab.models import model_hash
    from advlab.store import config_hash
    from advlab.train import Recipe, save_run, train_model

    m = config["model"]
    recipe = None if m["recipe"] is None else Recipe(**m["recipe"])
    common: dict[str, Any] = {"seed": config["seed"], "device": config["device"], "data_root": data_root,
                              "n_train": m["n_train"], "threads": config["threads"],
                              "model_options": m["model_options"], "recipe": recipe}
    defense = m["defense"]
    if defense is None:
        run = train_model(m["architecture"], config["dataset"], **common)
    else:
        from advlab.defenses import train_defended

        run = train_defended(m["architecture"], config["dataset"], defense["name"], eps=defense["eps"],
                             norm=defense["norm"], options=defense["options"], held_out=defense["held_out"], **common)
    key = config_hash(config)
    final = checkpoint_dir(workdir, key)
    _save_atomically(lambda out: save_run(run, out), final)
    s = run.summary
    metrics = {"clean_accuracy": s["test_accuracy"], "train_accuracy": s["train_accuracy"], "loss": s["loss"],
               "checkpoint": final.relative_to(workdir).as_posix(),
               "defense": None if defense is None else defense["name"],
               "epochs": s["epochs"], "n_train": s["n_train"]}
    return {"metrics": metrics, "model_hash": model_hash(run.model), "versions": dict(s["versions"]),
            "cost": {"seconds": run.history.seconds}}


def _save_atomically(save: Callable[[Path], object], final: Path) -> None:
    """``save(tmp)`` into a fresh folder beside ``final``, then renamed to ``final`` (a checkpoint left there by
    an earlier, killed run of the same cell, whose record never reached the store, is replaced)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*final.parent.glob(f".tmp-{final.name}-*"), *final.parent.glob(f".old-{final.name}-*")]:
        if not _alive(stale.name.split("-")[-2]):  # left by a killed run of this cell
            shutil.rmtree(stale, ignore_errors=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = final.with_name(f".tmp-{final.name}-{tag}")
    try:
        save(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{tag}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (a decimal string) runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _run_robustness(config: dict[str, Any], workdir: Path, checkpoints: Mapping[str, str],
                    data_root: Any) -> dict[str, Any]:
    from advlab.evaluate._robustness import robustness
    from advlab.sweep._suites import suite_from_definition

    loaded = _load(config, config["model"], workdir, checkpoints, data_root)
    n = config["n"]
    x, y = loaded.x[:n].to(loaded.device), loaded.y[:n].to(loaded.device)
    evaluation = robustness(loaded.model, x, y, norm=config["norm"], eps=list(config["eps"]),
                            suite=suite_from_definition(config["suite_definition"]), batch_size=config["batch_size"],
                            generator=_generator(config["seed"]), checks=config["checks"],
                            active_test=config["active_test"], adaptive=list(config["adaptive"]) or None)
    data = evaluation.to_dict()
    metrics = {k: v for k, v in data.items() if k not in ("checks", "cost", "config")}
    grid = _png(lambda p: _evaluation_grid(evaluation, loaded.model, config, p))
    return {"metrics": metrics, "checks": data["checks"], "cost": data["cost"], "versions": _versions(),
            "model_hash": loaded.meta["weights"]["content_hash"], "artifacts": {"grid.png": grid}}


def _evaluation_grid(evaluation: Any, model: nn.Module, config: Mapping[str, Any], path: Path) -> None:
    """Clean / perturbation / adversarial at the largest budget, with the model's predictions."""
    import torch

    from advlab.attacks import attack_mode
    from advlab.data import dataset_info
    from advlab.report import pick_examples, save_attack_grid

    idx = pick_examples(evaluation.clean_correct, 8)
    xs = evaluation.x[idx]
    xa = evaluation.x_adv[-1][idx].to(xs.device)
    with attack_mode(model), torch.no_grad():
        logits_clean, logits_adv = model(xs).cpu(), model(xa).cpu()
    broken = (~evaluation.robust[-1][idx] & evaluation.clean_correct[idx]).cpu()
    save_attack_grid(xs.cpu(), xa.cpu(), evaluation.y[idx].cpu(), logits_clean, logits_adv, path,
                     class_names=dataset_info(config["dataset"]).class_names, success=broken,
                     bounds=tuple(getattr(model, "bounds", (0.0, 1.0))),
                     title=f"{config['model'].get('name', 'model')}: suite {evaluation.suite} ({evaluation.norm}) "
                           f"eps={evaluation.eps[-1]:g}")


def _run_attack(config: dict[str, Any], workdir: Path, checkpoints: Mapping[str, str],
                data_root: Any) -> dict[str, Any]:
    from advlab.data import dataset_info
    from advlab.evaluate import evaluate_attack
    from advlab.report import save_record_grid

    loaded = _load(config, config["model"], workdir, checkpoints, data_root)
    n = config["n"]
    x, y = loaded.x[:n].to(loaded.device), loaded.y[:n].to(loaded.device)
    record = evaluate_attack(loaded.model, x, y, config["attack"], eps=list(config["eps"]), targets=config["targets"],
                             batch_size=config["batch_size"], generator=_generator(config["seed"]),
                             norm=config["norm"], **config["params"])
    names = dataset_info(config["dataset"]).class_names
    grid = _png(lambda p: save_record_grid(record, loaded.model, p, class_names=names))
    cost = {"n_forward": record.n_forward, "n_backward": record.n_backward, "n_queries": record.n_queries,
            "seconds": record.seconds}
    return {"metrics": record.to_dict(), "cost": cost, "versions": _versions(),
            "model_hash": loaded.meta["weights"]["content_hash"], "artifacts": {"grid.png": grid}}


def _run_blackbox(config: dict[str, Any], workdir: Path, checkpoints: Mapping[str, str],
                  data_root: Any) -> dict[str, Any]:
    from advlab.blackbox import substitute_attack_checkpoint
    from advlab.models import load_checkpoint_metadata

    path = _model_path(config["model"], workdir, checkpoints)
    meta = load_checkpoint_metadata(path)
    want = config["model"].get("checkpoint_hash")
    if want is not None and meta["weights"]["content_hash"] != want:
        raise ValueError(f"the checkpoint at {path} changed since the spec was read: run the sweep again")
    options: dict[str, Any] = dict(config["options"])
    if config["epochs"] is not None:
        options["epochs"] = config["epochs"]
    if config["norm"] is not None:
        options["norm"] = config["norm"]
    report = substitute_attack_checkpoint(
        path, data=config["dataset"], split=config["split"], data_root=data_root, seed_size=config["seed_size"],
        n=config["n"], max_queries=config["max_queries"], device=config["device"], seed=config["seed"],
        attack=config["attack"], eps=config["eps"], attack_options=config["attack_options"],
        model=config["substitute"], rounds=config["rounds"], batch_size=config["batch_size"], **options,
    )
    metrics = report.to_dict()
    metrics["config"].pop("checkpoint", None)  # where the file lies is not part of the result
    cost = {"n_queries": report.queries + report.attack_queries, "seconds": report.seconds["total"]}
    return {"metrics": metrics, "cost": cost, "versions": _versions(), "model_hash": meta["weights"]["content_hash"]}


def _run_transfer(config: dict[str, Any], workdir: Path, checkpoints: Mapping[str, str],
                  data_root: Any) -> dict[str, Any]:
    from advlab.evaluate import transfer_matrix

    models: dict[str, Any] = {}
    x = y = None
    for desc in config["models"]:
        loaded = _load(config, desc, workdir, checkpoints, data_root)
        models[desc["name"]] = loaded.model
        if x is None:
            n = config["n"]
            x, y = loaded.x[:n].to(loaded.device), loaded.y[:n].to(loaded.device)
    assert x is not None and y is not None
    t0 = time.perf_counter()
    matrix = transfer_matrix(models, x, y, attack=config["attack"], eps=config["eps"], norm=config["norm"],
                             attack_options={config["attack"]: config["params"]}, seed=config["seed"],
                             batch_size=config["batch_size"])
    seconds = time.perf_counter() - t0
    heatmap = _png(lambda p: matrix.save_heatmap(p, overwrite=True))
    return {"metrics": matrix.to_dict(), "cost": {"seconds": seconds}, "versions": _versions(), "model_hash": None,
            "artifacts": {"heatmap.png": heatmap}}
