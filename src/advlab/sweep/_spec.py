"""The benchmark spec: a TOML file naming datasets, models (to train, with a defense, or saved checkpoints),
evaluations (a suite of attacks or one attack, a norm and a grid of budgets) and, optionally, black-box
substitute attacks and transfer matrices. :func:`load_spec` reads and checks it; :meth:`Spec.cells` expands
it into the cells of the sweep (see :mod:`advlab.sweep`).

The format (``examples/bench-digits.toml`` is a complete example)::

    [sweep]                     # all optional
    name = "digits"             # a label for the summary
    seed = 0                    # seeds training, attacks, the black-box seed sets (default 0)
    n = 200                     # test points per evaluation: the first n of the split (default 1000)
    split = "test"              # "test" (default) or "train"
    batch_size = 256            # examples per chunk of the attacks (default 256)
    threads = 1                 # torch's intra-op threads in every cell (default 1): results are bitwise
                                # reproducible for a fixed number of threads, so it is part of every config

    [[dataset]]                 # one or more; the datasets the trained models are trained and evaluated on
    name = "digits"

    [[model]]                   # a model trained by the sweep (one per dataset)
    name = "standard"           # unique display name
    architecture = "cnn-small"  # a registered model (advlab list models)
    recipe = { epochs = 2 }     # optional overrides of its recipe (epochs, lr, optimizer, batch_size, ...)
    options = { dropout = 0.0 } # optional hyper-parameters of the architecture
    n_train = 1000              # optional: train on a random subset
    datasets = ["digits"]       # optional: only these of the [[dataset]] entries

    [[model]]                   # ... with a training defense
    name = "fast-at"
    architecture = "cnn-small"
    defense = "fast-at"         # a training defense (advlab list defenses)
    defense_eps = 0.1           # its budget (required with a defense)
    defense_norm = "linf"       # optional, default the defense's
    held_out = 50               # optional: points set aside for its per-epoch robustness monitor
    [model.defense_options]     # optional options of the defense
    step_size = 0.125

    [[model]]                   # a saved checkpoint, evaluated on the dataset it records
    name = "mine"
    checkpoint = "runs/mine"    # relative to this file

    [[evaluation]]              # a worst-case cascade over a suite (advlab.evaluate.robustness)
    suite = "standard"          # a registered suite, or a suite TOML file (relative to this file)
    norm = "linf"               # default "linf"
    eps = [0.05, 0.1]           # budgets (raw input units)
    checks = true               # run the self-checks (default true)
    active_test = false         # also the active test (Zimmermann et al. 2022; default false)
    adaptive = []               # adaptive attacks: "bpda", "eot", "dlr" (default none)
    models = ["standard"]       # optional: only these models (default all)

    [[evaluation]]              # ... or one attack (advlab.evaluate.evaluate_attack)
    attack = "pgd"
    norm = "linf"               # default the attack's
    eps = [0.1]
    targets = "least-likely"    # optional: a targeted run ("least-likely", "random" or a class index)
    [evaluation.params]         # optional hyper-parameters of the attack
    steps = 20

    [[blackbox]]                # optional: Papernot's substitute attack on one model
    model = "standard"
    attack = "fgsm"             # the white-box attack run on the substitute (default fgsm)
    eps = 0.3
    substitute = "mlp"          # the substitute's architecture (default cnn-small)
    seed_size = 150             # the attacker's seed points (default 150)
    rounds = 3                  # substitute training rounds (default 6)
    epochs = 5                  # epochs per round (default 10)
    max_queries = 10000         # optional query budget
    n = 100                     # optional: points attacked (default [sweep] n)
    [blackbox.options]          # optional: other arguments of advlab.blackbox.substitute_attack (lam, tau, ...)

    [[transfer]]                # optional: a transfer matrix among the models of each dataset
    models = ["standard", "fast-at"]   # default all
    attack = "pgd"              # default pgd
    eps = 0.1
    [transfer.params]           # optional hyper-parameters of the attack

A mistake is a :class:`SpecError` naming the file, the line and the field, e.g.
``bench.toml:12: model[1].defense: unknown training defense 'fastat'; valid names: ensemble-at, fast-at, ...``
(entries of an array of tables count from 0).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advlab._toml import tomllib
from advlab.sweep._lines import LineIndex, format_path

if TYPE_CHECKING:
    from advlab.sweep._cells import Cell

__all__ = ["BlackboxEntry", "EvaluationEntry", "ModelEntry", "Spec", "SpecError", "SweepSettings", "TransferEntry",
           "load_spec", "parse_spec"]

SPLITS = ("test", "train")


class SpecError(ValueError):
    """A malformed benchmark spec: the message names the file, the line and the field at fault.

    Attributes:
        file: the spec file. line: the 1-based line (``None`` when unknown). field: the field, e.g.
            ``"model[1].defense"`` (``""`` for the file as a whole). reason: what is wrong and what to do.
    """

    def __init__(self, file: str, line: int | None, field: str, reason: str) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field + ': ' if field else ''}{reason}")


@dataclass(frozen=True)
class SweepSettings:
    """The ``[sweep]`` table (see the module docstring)."""

    name: str = "sweep"
    seed: int = 0
    n: int = 1000
    split: str = "test"
    batch_size: int = 256
    threads: int = 1


@dataclass(frozen=True)
class ModelEntry:
    """One ``[[model]]``: trained by the sweep (``architecture``) or a saved ``checkpoint``.

    For a checkpoint, ``checkpoint_hash`` is its weights' content hash, ``checkpoint_dataset`` the dataset
    it records, ``checkpoint_model`` its architecture and ``checkpoint_defense`` the defense it was trained
    with (``None``: none recorded)."""

    index: int
    name: str
    architecture: str | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] | None = None
    n_train: int | None = None
    datasets: tuple[str, ...] | None = None
    defense: str | None = None
    defense_eps: float | None = None
    defense_norm: str | None = None
    defense_options: Mapping[str, Any] = field(default_factory=dict)
    held_out: int | None = None
    checkpoint: Path | None = None
    checkpoint_hash: str | None = None
    checkpoint_dataset: str | None = None
    checkpoint_model: str | None = None
    checkpoint_defense: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EvaluationEntry:
    """One ``[[evaluation]]``: a ``suite`` (its resolved definition in ``suite_config``) or an ``attack``."""

    index: int
    norm: str
    eps: tuple[float, ...]
    suite: str | None = None
    suite_config: Mapping[str, Any] | None = None
    checks: bool = True
    active_test: bool = False
    adaptive: tuple[str, ...] = ()
    attack: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    targets: str | int | None = None
    models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class BlackboxEntry:
    """One ``[[blackbox]]``: the substitute attack on ``model``."""

    index: int
    model: str
    eps: float
    attack: str = "fgsm"
    norm: str | None = None
    substitute: str = "cnn-small"
    seed_size: int = 150
    rounds: int = 6
    epochs: int | None = None
    max_queries: int | None = None
    n: int | None = None
    attack_options: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferEntry:
    """One ``[[transfer]]``: a transfer matrix among ``models`` (default all) of each dataset."""

    index: int
    eps: float
    attack: str = "pgd"
    norm: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Spec:
    """A checked benchmark spec (:func:`load_spec`).

    Attributes:
        path: the file it was read from. sweep: the ``[sweep]`` settings. datasets: the dataset names.
        models / evaluations / blackbox / transfer: the entries, in file order.
    """

    path: Path
    sweep: SweepSettings
    datasets: tuple[str, ...]
    models: tuple[ModelEntry, ...]
    evaluations: tuple[EvaluationEntry, ...]
    blackbox: tuple[BlackboxEntry, ...] = ()
    transfer: tuple[TransferEntry, ...] = ()

    def cells(self, *, device: str = "cpu", seed: int | None = None) -> list[Cell]:
        """The sweep's cells (see :func:`advlab.sweep.expand`): train cells first, each key unique.

        Args:
            device: where the cells compute (``"cpu"``, ``"cuda"``...); part of every config, since results
                differ bitwise between devices.
            seed: replaces ``[sweep] seed`` when given.
        """
        from advlab.sweep._cells import expand

        return expand(self, device=device, seed=seed)


# --------------------------------------------------------------------------------------------- parsing


class _Checker:
    """Type checks of the parsed TOML values, raising :class:`SpecError` at the value's line."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.index = LineIndex(text)

    def error(self, path: Sequence[str | int], reason: str) -> SpecError:
        return SpecError(self.file, self.index.line(path), format_path(path), reason)

    def table(self, value: Any, path: Sequence[str | int], valid: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {_describe(value)}")
        unknown = [k for k in value if k not in valid]
        if unknown:
            raise self.error((*path, unknown[0]), f"unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
        return value

    def array_of_tables(self, doc: dict[str, Any], key: str) -> list[Any]:
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise self.error((key,), f"expected an array of tables ([[{key}]]), got {_describe(value)}")
        return value

    def str_(self, value: Any, path: Sequence[str | int], choices: Sequence[str] | None = None,
             what: str = "") -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_describe(value)}")
        if choices is not None and value not in choices:
            raise self.error(path, f"unknown {what or path[-1]} {value!r}; valid: {', '.join(choices)}")
        return value

    def int_(self, value: Any, path: Sequence[str | int], minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise self.error(path, f"must be >= {minimum}, got {value}")
        return value

    def float_(self, value: Any, path: Sequence[str | int], positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"expected a number, got {_describe(value)}")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")) or number < 0 or (positive and number == 0):
            raise self.error(path, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        return number

    def bool_(self, value: Any, path: Sequence[str | int]) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {_describe(value)}")
        return value

    def names(self, value: Any, path: Sequence[str | int]) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(path, f"expected a non-empty array of strings, got {_describe(value)}")
        return tuple(self.str_(v, (*path, i)) for i, v in enumerate(value))

    def eps_list(self, value: Any, path: Sequence[str | int]) -> tuple[float, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.error(path, "give at least one budget, e.g. eps = [0.1]")
        budgets = sorted({self.float_(v, (*path, i) if isinstance(value, list) else path)
                          for i, v in enumerate(items)})
        return tuple(budgets)


def _describe(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "a table"}
    text = repr(value) if not isinstance(value, (list, dict)) else ""
    return f"{kinds.get(type(value), type(value).__name__)} {text}".strip()


_TOP = ("sweep", "dataset", "model", "evaluation", "blackbox", "transfer")
_SWEEP_KEYS = ("name", "seed", "n", "split", "batch_size", "threads")
_MODEL_KEYS = ("name", "architecture", "checkpoint", "recipe", "options", "n_train", "datasets", "defense",
               "defense_eps", "defense_norm", "defense_options", "held_out")
_EVAL_KEYS = ("suite", "attack", "norm", "eps", "checks", "active_test", "adaptive", "params", "targets", "models")
_BLACKBOX_KEYS = ("model", "attack", "eps", "norm", "substitute", "seed_size", "rounds", "epochs", "max_queries",
                  "n", "attack_options", "options")
_TRANSFER_KEYS = ("models", "attack", "eps", "norm", "params")
# Arguments of substitute_attack set by the sweep itself (not through [blackbox.options]).
_BLACKBOX_FIXED = ("oracle", "seed_x", "x_test", "y_test", "attack", "eps", "norm", "attack_options", "model",
                   "dataset", "rounds", "epochs", "seed", "generator", "batch_size", "progress")


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Reads and checks the benchmark spec at ``path`` (TOML; format in :mod:`advlab.sweep._spec`).

    Raises :class:`SpecError` (a ``ValueError``) naming the file, the line and the field for a TOML syntax
    error, an unknown key, a value of the wrong type, an unknown dataset, model, defense, suite or attack
    (listing the valid ones), a missing checkpoint; ``FileNotFoundError`` when ``path`` does not exist.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "bench.toml"
        >>> _ = p.write_text('[[dataset]]\\nname = "digits"\\n[[model]]\\nname = "m"\\narchitecture = "softmax"\\n'
        ...                  '[[evaluation]]\\nattack = "fgsm"\\neps = [0.1]\\n')
        >>> spec = load_spec(p)
        >>> [c.kind for c in spec.cells()]
        ['train', 'attack']
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return parse_spec(text, file=str(p), base=p.parent)


def parse_spec(text: str, *, file: str = "<spec>", base: str | os.PathLike[str] = ".") -> Spec:
    """Checks the TOML ``text`` of a spec (see :func:`load_spec`); relative paths are taken from ``base``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(found[1]) if found else (len(text.splitlines()) or 1)
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        where = f", column {found[2]}" if found else " (end of file)"
        raise SpecError(file, line, "", f"TOML syntax error{where}: {reason}") from None
    c = _Checker(file, text)
    root = Path(base)
    c.table(doc, (), _TOP)
    sweep = _sweep(c, doc.get("sweep", {}))
    datasets = _datasets(c, c.array_of_tables(doc, "dataset"))
    models = tuple(_model(c, m, i, root, datasets) for i, m in enumerate(c.array_of_tables(doc, "model")))
    if not models:
        raise SpecError(file, None, "model",
                        "the spec has no [[model]]; add one (architecture = ... or checkpoint = ...)")
    seen: dict[str, int] = {}
    for m in models:
        if m.name in seen:
            raise c.error(("model", m.index, "name"), f"duplicate model name {m.name!r} (also model[{seen[m.name]}]); "
                          "give each model its own name")
        seen[m.name] = m.index
    if any(m.architecture is not None for m in models) and not datasets:
        raise SpecError(file, None, "dataset", "models to train need a dataset: add [[dataset]] name = \"digits\"")
    evaluations = tuple(_evaluation(c, e, i, root, seen) for i, e in enumerate(c.array_of_tables(doc, "evaluation")))
    blackbox = tuple(_blackbox(c, b, i, seen) for i, b in enumerate(c.array_of_tables(doc, "blackbox")))
    transfer = tuple(_transfer(c, t, i, seen) for i, t in enumerate(c.array_of_tables(doc, "transfer")))
    if not (evaluations or blackbox or transfer):
        raise SpecError(file, None, "evaluation", "the spec evaluates nothing; add an [[evaluation]] "
                        "(suite = \"standard\" or attack = \"pgd\", with eps = [...])")
    return Spec(path=Path(file), sweep=sweep, datasets=datasets, models=models, evaluations=evaluations,
                blackbox=blackbox, transfer=transfer)


def _sweep(c: _Checker, raw: Any) -> SweepSettings:
    t = c.table(raw, ("sweep",), _SWEEP_KEYS)
    d = SweepSettings()
    return SweepSettings(
        name=c.str_(t.get("name", d.name), ("sweep", "name")),
        seed=_seed(c, t.get("seed", d.seed), ("sweep", "seed")),
        n=c.int_(t.get("n", d.n), ("sweep", "n"), minimum=1),
        split=c.str_(t.get("split", d.split), ("sweep", "split"), SPLITS),
        batch_size=c.int_(t.get("batch_size", d.batch_size), ("sweep", "batch_size"), minimum=1),
        threads=c.int_(t.get("threads", d.threads), ("sweep", "threads"), minimum=1),
    )


def _seed(c: _Checker, value: Any, path: Sequence[str | int]) -> int:
    seed = c.int_(value, path, minimum=0)
    if seed > 2**63 - 1:
        raise c.error(path, f"must be at most 2**63-1, got {seed}")
    return seed


def _datasets(c: _Checker, raw: list[Any]) -> tuple[str, ...]:
    from advlab.data import list_datasets

    names: list[str] = []
    for i, entry in enumerate(raw):
        t = c.table(entry, ("dataset", i), ("name",))
        if "name" not in t:
            raise c.error(("dataset", i), "missing key 'name'; e.g. name = \"digits\"")
        name = c.str_(t["name"], ("dataset", i, "name"), list_datasets(), what="dataset")
        if name in names:
            raise c.error(("dataset", i, "name"), f"dataset {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _model(c: _Checker, raw: Any, i: int, root: Path, datasets: tuple[str, ...]) -> ModelEntry:
    from advlab.models import list_models

    path: tuple[str | int, ...] = ("model", i)
    t = c.table(raw, path, _MODEL_KEYS)
    if "name" not in t:
        raise c.error(path, "missing key 'name' (a unique display name, e.g. name = \"standard\")")
    name = c.str_(t["name"], (*path, "name"))
    if ("architecture" in t) == ("checkpoint" in t):
        raise c.error(path, "give exactly one of architecture = \"...\" (a model to train) or checkpoint = \"...\" "
                      "(a saved model)")
    if "checkpoint" in t:
        extra = sorted(set(t) - {"name", "checkpoint"})
        if extra:
            raise c.error((*path, extra[0]), f"{extra[0]!r} is for models the sweep trains, not for a checkpoint")
        return _checkpoint_model(c, t, i, name, root)
    arch = c.str_(t["architecture"], (*path, "architecture"), list_models(), what="model")
    from advlab.models import is_sklearn_model

    if is_sklearn_model(arch):
        for key in ("recipe", "defense"):
            if key in t:
                raise c.error((*path, key), f"{arch!r} is a scikit-learn model, fitted with its own options "
                              f"(options = {{...}}), without a {key}; drop {key!r}")
    from advlab.train import Recipe

    recipe = _typed_fields(c, (*path, "recipe"), Recipe,
                           c.table(t.get("recipe", {}), (*path, "recipe"), _recipe_fields()))
    options = t.get("options")
    if options is not None:
        options = dict(c.table(options, (*path, "options"), list(options) if isinstance(options, dict) else []))
        _check_model_options(c, (*path, "options"), arch, options)
    n_train = None if "n_train" not in t else c.int_(t["n_train"], (*path, "n_train"), minimum=1)
    only = None
    if "datasets" in t:
        only = c.names(t["datasets"], (*path, "datasets"))
        for j, d in enumerate(only):
            if d not in datasets:
                raise c.error((*path, "datasets", j), f"dataset {d!r} is not among the spec's [[dataset]] entries "
                              f"({', '.join(datasets) or 'none'}); add it there")
    defense = None
    defense_eps = defense_norm = None
    defense_options: dict[str, Any] = {}
    held_out = None
    if "defense" in t:
        from advlab.defenses import defense_spec, list_defenses

        defense = c.str_(t["defense"], (*path, "defense"), list_defenses("training"), what="training defense")
        spec = defense_spec(defense)
        if "defense_eps" not in t:
            raise c.error((*path, "defense"), f"defense {defense!r} needs its budget: add defense_eps = 0.1 (raw input "
                          "units)")
        defense_eps = c.float_(t["defense_eps"], (*path, "defense_eps"), positive=True)
        if "defense_norm" in t:
            defense_norm = c.str_(t["defense_norm"], (*path, "defense_norm"), spec.norms, what="norm")
        defense_options = dict(c.table(t.get("defense_options", {}), (*path, "defense_options"),
                                       list(spec.defaults())))
        if spec.config is not None:
            defense_options = _typed_fields(c, (*path, "defense_options"), spec.config, defense_options)
        try:
            spec.make_config(defense_options)
        except (TypeError, ValueError) as err:
            raise c.error((*path, "defense_options"), str(err)) from None
        if "held_out" in t:
            held_out = c.int_(t["held_out"], (*path, "held_out"), minimum=0)
    else:
        for key in ("defense_eps", "defense_norm", "defense_options", "held_out"):
            if key in t:
                raise c.error((*path, key), f"{key!r} needs a defense: add defense = \"...\" or drop {key!r}")
    return ModelEntry(index=i, name=name, architecture=arch, recipe=recipe, options=options, n_train=n_train,
                      datasets=only, defense=defense, defense_eps=defense_eps, defense_norm=defense_norm,
                      defense_options=defense_options, held_out=held_out)


def _recipe_fields() -> list[str]:
    from advlab.train import Recipe

    return [f.name for f in dataclasses.fields(Recipe)]


def _typed_fields(c: _Checker, path: tuple[str | int, ...], config: type[Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against the field types of the dataclass ``config`` (a float field takes an integer,
    made a float: ``1`` and ``1.0`` hash differently)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(config)}
    return {key: _typed(c, (*path, key), value, types[key]) for key, value in given.items()}


def _typed(c: _Checker, path: tuple[str | int, ...], value: Any, annotation: str) -> Any:
    kinds = {t.strip() for t in annotation.replace("Optional[", "").replace("]", "").split("|")}
    names = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
    wanted = [names[k] for k in ("bool", "int", "float", "str") if k in kinds]
    if not wanted or any(k.startswith(("tuple", "list", "Sequence", "Literal", "Any")) for k in kinds):
        return value  # a type the check does not know: the config's own checks decide
    if isinstance(value, bool):
        ok = "bool" in kinds
    elif isinstance(value, int):
        ok = "int" in kinds or "float" in kinds
        value = value if "int" in kinds else float(value)
    elif isinstance(value, float):
        ok = "float" in kinds
    elif isinstance(value, str):
        ok = "str" in kinds
    else:
        ok = False
    if not ok:
        raise c.error(path, f"expected {' or '.join(wanted)}, got {_describe(value)}")
    return value


def _check_model_options(c: _Checker, path: tuple[str | int, ...], arch: str, options: dict[str, Any]) -> None:
    """Options the architecture's builder (a scikit-learn model: its fitting) does not take are refused, naming
    the ones it takes."""
    from advlab.models import MODELS, is_sklearn_model
    from advlab.train import FIT_CONFIGS

    if is_sklearn_model(arch):
        if arch in FIT_CONFIGS:
            fit = FIT_CONFIGS[arch]
            valid = [f.name for f in dataclasses.fields(fit)]
            options.update(_typed_fields(c, path, fit, c.table(options, path, valid)))
        return

    try:
        builder = MODELS.get(arch)
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"in_shape", "num_classes", "dataset", "generator"}
    valid = [p for p in params if p not in fixed]
    for key in options:
        if key not in valid:
            raise c.error((*path, key),
                          f"model {arch!r} has no option {key!r}; its options: {', '.join(valid) or '(none)'}")


def _checkpoint_model(c: _Checker, t: dict[str, Any], i: int, name: str, root: Path) -> ModelEntry:
    from advlab.models import load_checkpoint_metadata

    path = ("model", i, "checkpoint")
    given = c.str_(t["checkpoint"], path)
    folder = Path(given).expanduser()
    if not folder.is_absolute():
        folder = root / folder
    folder = folder.resolve()
    if not folder.is_dir():
        raise c.error(path, f"no checkpoint folder at {folder}; the path is relative to the spec file")
    try:
        meta = load_checkpoint_metadata(folder)
    except (OSError, ValueError) as err:
        raise c.error(path, f"cannot read the checkpoint at {folder}: {err}") from None
    content = meta.get("weights", {}).get("content_hash")
    dataset = meta.get("dataset")
    if not isinstance(content, str) or not dataset:
        raise c.error(path, f"the checkpoint at {folder} records no weights hash or no dataset; save it with "
                      "advlab train (or advlab.save_checkpoint(..., dataset=...))")
    defense = meta.get("extra", {}).get("defense") if isinstance(meta.get("extra"), dict) else None
    recorded = None
    if isinstance(defense, dict):
        recorded = {k: defense.get(k) for k in ("name", "eps", "norm")}
    return ModelEntry(index=i, name=name, checkpoint=folder, checkpoint_hash=content, checkpoint_dataset=str(dataset),
                      checkpoint_model=str(meta["model"]["name"]), checkpoint_defense=recorded)


def _model_refs(c: _Checker, value: Any, path: tuple[str | int, ...], models: Mapping[str, int]) -> tuple[str, ...]:
    names = c.names(value, path)
    for j, n in enumerate(names):
        if n not in models:
            raise c.error((*path, j), f"unknown model {n!r}; the spec's models: {', '.join(models)}")
    return names


def _evaluation(c: _Checker, raw: Any, i: int, root: Path, models: Mapping[str, int]) -> EvaluationEntry:
    path: tuple[str | int, ...] = ("evaluation", i)
    t = c.table(raw, path, _EVAL_KEYS)
    if ("suite" in t) == ("attack" in t):
        raise c.error(path, "give exactly one of suite = \"...\" (a worst-case cascade) or attack = \"...\"")
    if "eps" not in t:
        raise c.error(path, "missing key 'eps' (the budgets, e.g. eps = [0.05, 0.1])")
    eps = c.eps_list(t["eps"], (*path, "eps"))
    only = _model_refs(c, t["models"], (*path, "models"), models) if "models" in t else None
    if "suite" in t:
        for key in ("params", "targets"):
            if key in t:
                raise c.error((*path, key), f"{key!r} is for a single attack (attack = ...), not a suite; define the "
                              "suite's attacks in a suite file")
        name = c.str_(t["suite"], (*path, "suite"))
        suite_config = _suite_config(c, name, (*path, "suite"), root)
        norm = c.str_(t.get("norm", "linf"), (*path, "norm"))
        norms = suite_config.get("norms")
        if isinstance(norms, (list, tuple)) and norms and norm not in norms:
            raise c.error((*path, "norm"), f"suite {name!r} supports the norms {', '.join(norms)}, not {norm!r}")
        checks = c.bool_(t.get("checks", True), (*path, "checks"))
        active = c.bool_(t.get("active_test", False), (*path, "active_test"))
        adaptive = _adaptive(c, t.get("adaptive", []), (*path, "adaptive"))
        return EvaluationEntry(index=i, norm=norm, eps=eps, suite=str(suite_config.get("name", name)),
                               suite_config=suite_config, checks=checks, active_test=active, adaptive=adaptive,
                               models=only)
    from advlab.attacks import attack_spec, list_attacks

    for key in ("checks", "active_test", "adaptive"):
        if key in t:
            raise c.error((*path, key), f"{key!r} is for suites (suite = ...), not a single attack")
    attack = c.str_(t["attack"], (*path, "attack"), list_attacks(), what="attack")
    spec = attack_spec(attack)
    norm = c.str_(t.get("norm", spec.default_norm), (*path, "norm"), spec.norms, what=f"norm of {attack}")
    params = _attack_params(c, attack, t.get("params", {}), (*path, "params"))
    targets = t.get("targets")
    if targets is not None:
        if not spec.targeted:
            raise c.error((*path, "targets"), f"attack {attack!r} has no targeted mode; drop 'targets'")
        if isinstance(targets, str):
            c.str_(targets, (*path, "targets"), ("least-likely", "random"), what="target mode")
        else:
            c.int_(targets, (*path, "targets"), minimum=0)
    return EvaluationEntry(index=i, norm=norm, eps=eps, attack=attack, params=params, targets=targets, models=only)


def _adaptive(c: _Checker, value: Any, path: tuple[str | int, ...]) -> tuple[str, ...]:
    """The ``adaptive`` options of a suite evaluation (a name or a list of names), checked."""
    from advlab.evaluate._robustness import ADAPTIVE

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise c.error(path, f"expected a string or an array of strings, got {_describe(value)}")
    out: list[str] = []
    for j, item in enumerate(items):
        where = (*path, j) if isinstance(value, list) else path
        name = c.str_(item, where, ADAPTIVE, what="adaptive option")
        if name not in out:
            out.append(name)
    return tuple(out)


def _attack_params(c: _Checker, attack: str, raw: Any, path: tuple[str | int, ...]) -> dict[str, Any]:
    """The attack's full hyper-parameters: its defaults with ``raw`` applied (checked by its config)."""
    from advlab.attacks import attack_spec

    spec = attack_spec(attack)
    defaults = spec.defaults()
    given = _typed_fields(c, path, spec.config, c.table(raw, path, list(defaults)))
    try:
        config = spec.config(**given)
    except (TypeError, ValueError) as err:
        raise c.error(path, f"attack {attack!r}: {err}") from None
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _suite_config(c: _Checker, name: str, path: tuple[str | int, ...], root: Path) -> dict[str, Any]:
    """The full definition of suite ``name`` (registered) or of the suite file it names."""
    from advlab.sweep._suites import list_suite_names, suite_definition

    try:
        registered = list_suite_names()
    except ImportError as err:
        raise c.error(path, f"suites are not available in this installation ({err})") from None
    if name in registered:
        return suite_definition(name)
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    if name.endswith(".toml") or candidate.is_file():
        if not candidate.is_file():
            raise c.error(path, f"no suite file at {candidate.resolve()}; the path is relative to the spec file")
        try:
            return suite_definition(candidate.resolve())
        except (OSError, ValueError, TypeError) as err:
            raise c.error(path, f"suite file {candidate}: {err}") from None
    raise c.error(path, f"unknown suite {name!r}; valid: {', '.join(registered)} (or a suite .toml file)")


def _blackbox(c: _Checker, raw: Any, i: int, models: Mapping[str, int]) -> BlackboxEntry:
    from advlab.attacks import attack_spec, list_attacks
    from advlab.models import list_models

    path: tuple[str | int, ...] = ("blackbox", i)
    t = c.table(raw, path, _BLACKBOX_KEYS)
    for key in ("model", "eps"):
        if key not in t:
            raise c.error(path, f"missing key {key!r}" + (" (the target, a [[model]] name)" if key == "model" else ""))
    model = c.str_(t["model"], (*path, "model"), list(models), what="model")
    attack = c.str_(t.get("attack", "fgsm"), (*path, "attack"), list_attacks(), what="attack")
    spec = attack_spec(attack)
    norm = None if "norm" not in t else c.str_(t["norm"], (*path, "norm"), spec.norms, what=f"norm of {attack}")
    attack_options = None
    if "attack_options" in t:
        attack_options = _typed_fields(c, (*path, "attack_options"), spec.config,
                                       c.table(t["attack_options"], (*path, "attack_options"), list(spec.defaults())))
    sig = inspect.signature(_substitute_attack())
    valid = [p for p in sig.parameters if p not in _BLACKBOX_FIXED]
    options = dict(c.table(t.get("options", {}), (*path, "options"), valid))
    return BlackboxEntry(
        index=i, model=model, eps=c.float_(t["eps"], (*path, "eps")), attack=attack, norm=norm,
        substitute=c.str_(t.get("substitute", "cnn-small"), (*path, "substitute"), list_models(), what="model"),
        seed_size=c.int_(t.get("seed_size", 150), (*path, "seed_size"), minimum=1),
        rounds=c.int_(t.get("rounds", 6), (*path, "rounds"), minimum=1),
        epochs=None if "epochs" not in t else c.int_(t["epochs"], (*path, "epochs"), minimum=1),
        max_queries=None if "max_queries" not in t else c.int_(t["max_queries"], (*path, "max_queries"), minimum=1),
        n=None if "n" not in t else c.int_(t["n"], (*path, "n"), minimum=1),
        attack_options=attack_options, options=options,
    )


def _substitute_attack() -> Callable[..., Any]:
    from advlab.blackbox import substitute_attack

    return substitute_attack


def _transfer(c: _Checker, raw: Any, i: int, models: Mapping[str, int]) -> TransferEntry:
    from advlab.attacks import attack_spec, list_attacks

    path: tuple[str | int, ...] = ("transfer", i)
    t = c.table(raw, path, _TRANSFER_KEYS)
    if "eps" not in t:
        raise c.error(path, "missing key 'eps' (one budget, e.g. eps = 0.1)")
    attack = c.str_(t.get("attack", "pgd"), (*path, "attack"), list_attacks(), what="attack")
    spec = attack_spec(attack)
    norm = None if "norm" not in t else c.str_(t["norm"], (*path, "norm"), spec.norms, what=f"norm of {attack}")
    only = _model_refs(c, t["models"], (*path, "models"), models) if "models" in t else None
    return TransferEntry(index=i, eps=c.float_(t["eps"], (*path, "eps")), attack=attack, norm=norm,
                         params=_attack_params(c, attack, t.get("params", {}), (*path, "params")), models=only)
