"""Benchmark specs and their expansion into cells (no cell is run here; see test_sweep_run.py).

A spec mistake is one ``SpecError`` naming the file, the line and the field; cells have stable keys (the
config hash), full configs, and evaluation cells name the train cells they need."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from advlab.store import config_hash
from advlab.sweep import Cell, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
[sweep]
name = "t"
seed = 3
n = 50

[[dataset]]
name = "digits"

[[dataset]]
name = "mnist"

[[model]]
name = "plain"
architecture = "softmax"
recipe = { epochs = 1 }

[[model]]
name = "robust"
architecture = "mlp"
defense = "fgsm-at"
defense_eps = 0.1
[model.recipe]
epochs = 2

[[evaluation]]
attack = "fgsm"
eps = [0.1, 0.05]

[[evaluation]]
attack = "pgd"
eps = [0.1]
models = ["robust"]
[evaluation.params]
steps = 5
"""


def write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{path}:"), str(err)
    return err


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence - 1]


# ------------------------------------------------------------------------------------------------ expansion


def test_expansion_counts_kinds_and_dependencies(tmp_path: Path) -> None:
    cells = load_spec(write(tmp_path, BASE)).cells()
    kinds = [c.kind for c in cells]
    # 2 models x 2 datasets trained; fgsm on all 4; pgd on "robust" only (2 datasets)
    assert kinds == ["train"] * 4 + ["attack"] * 6
    assert all(isinstance(c, Cell) and c.key == config_hash(c.config) for c in cells)
    assert len({c.key for c in cells}) == len(cells)
    trains = {(c.config["model"]["name"], c.config["dataset"]): c for c in cells if c.kind == "train"}
    for c in cells:
        if c.kind == "train":
            assert c.dependencies == ()
            continue
        train = trains[(c.config["model"]["name"], c.config["dataset"])]
        assert c.dependencies == (train.key,)
        assert c.config["model"]["train_key"] == train.key
        assert {k: v for k, v in c.config["model"].items() if k != "train_key"} == train.config["model"]
        assert (c.config["n"], c.config["seed"], c.config["split"]) == (50, 3, "test")
    pgd = [c for c in cells if c.config.get("attack") == "pgd"]
    assert [c.config["model"]["name"] for c in pgd] == ["robust", "robust"]
    assert pgd[0].config["params"]["steps"] == 5
    assert set(pgd[0].config["params"]) >= {"steps", "step_size", "random_start"}  # the full hyper-parameters
    fgsm = next(c for c in cells if c.config.get("attack") == "fgsm")
    assert fgsm.config["eps"] == [0.05, 0.1]  # sorted


def test_configs_are_complete(tmp_path: Path) -> None:
    from advlab.defenses import defense_spec

    cells = load_spec(write(tmp_path, BASE)).cells()
    plain = cells[0].config
    assert plain["kind"] == "train" and plain["model"]["recipe"]["epochs"] == 1
    assert plain["model"]["recipe"]["lr"] == 1e-2  # the recipe's defaults are resolved into the config
    assert plain["model"]["defense"] is None
    assert (plain["threads"], plain["device"]) == (1, "cpu")
    robust = next(c.config for c in cells if c.kind == "train" and c.config["model"]["name"] == "robust")
    defense = robust["model"]["defense"]
    assert defense["name"] == "fgsm-at" and defense["eps"] == 0.1 and defense["norm"] == "linf"
    assert set(defense["options"]) == set(defense_spec("fgsm-at").defaults())
    assert robust["model"]["recipe"]["epochs"] == 2


def test_keys_are_stable(tmp_path: Path) -> None:
    a = load_spec(write(tmp_path, BASE)).cells()
    # the same spec elsewhere, with its tables' keys in another order: the same keys
    shuffled = BASE.replace('name = "plain"\narchitecture = "softmax"', 'architecture = "softmax"\nname = "plain"')
    (tmp_path / "other").mkdir()
    b = load_spec(write(tmp_path / "other", shuffled)).cells()
    assert [c.key for c in a] == [c.key for c in b]
    # another seed: every key changes; a device too
    assert not {c.key for c in a} & {c.key for c in load_spec(write(tmp_path, BASE)).cells(seed=4)}
    assert not {c.key for c in a} & {c.key for c in load_spec(write(tmp_path, BASE)).cells(device="cuda")}
    # another budget of the pgd evaluation: only its cells change; the train cells keep their keys
    c = load_spec(write(tmp_path, BASE.replace("eps = [0.1]\nmodels", "eps = [0.2]\nmodels"))).cells()
    changed = {x.key for x in c} - {x.key for x in a}
    assert len(changed) == 2 and all(x.config["attack"] == "pgd" for x in c if x.key in changed)
    # a longer training changes that model's train cell and every cell that needs it, nothing else
    d = load_spec(write(tmp_path, BASE.replace("[model.recipe]\nepochs = 2", "[model.recipe]\nepochs = 3"))).cells()
    changed = {x.key for x in d} - {x.key for x in a}
    assert {x.config["model"]["name"] for x in d if x.key in changed} == {"robust"}
    assert len(changed) == 2 + 2 + 2  # 2 train cells, fgsm and pgd on each dataset


def test_duplicate_cells_once(tmp_path: Path) -> None:
    text = BASE + '\n[[evaluation]]\nattack = "fgsm"\neps = [0.05, 0.1]\n'
    assert len(load_spec(write(tmp_path, text)).cells()) == 10


def test_checkpoint_model_is_keyed_by_its_weights(tmp_path: Path) -> None:
    from advlab.models import create_model, model_hash, save_checkpoint

    net = create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
    save_checkpoint(net, tmp_path / "a" / "saved-net", dataset="digits")
    text = ('[[model]]\nname = "given"\ncheckpoint = "saved-net"\n[[evaluation]]\nattack = "fgsm"\neps = [0.1]\n'
            '[[blackbox]]\nmodel = "given"\neps = 0.1\nsubstitute = "softmax"\n'
            '[[transfer]]\nattack = "fgsm"\neps = 0.1\n')
    cells = load_spec(write(tmp_path / "a", text)).cells()
    assert [c.kind for c in cells] == ["attack", "blackbox", "transfer"]
    attack = cells[0]
    assert attack.dependencies == () and attack.config["dataset"] == "digits"
    assert attack.config["model"]["checkpoint_hash"] == model_hash(net)
    assert "saved-net" not in str(attack.config)  # where the file lies is not part of the config...
    assert attack.checkpoints == {model_hash(net): str((tmp_path / "a" / "saved-net").resolve())}  # ...but of the cell
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = load_spec(tmp_path / "b" / "bench.toml").cells()
    assert [c.key for c in moved] == [c.key for c in cells]
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    save_checkpoint(net, tmp_path / "b" / "saved-net", dataset="digits", overwrite=True)
    assert load_spec(tmp_path / "b" / "bench.toml").cells()[0].key != attack.key  # other weights, another cell


def test_blackbox_and_transfer_cells(tmp_path: Path) -> None:
    text = BASE + ('\n[[blackbox]]\nmodel = "plain"\neps = 0.2\nsubstitute = "softmax"\nrounds = 2\n'
                   '[blackbox.options]\nlam = 0.1\n\n[[transfer]]\nattack = "fgsm"\neps = 0.1\n')
    cells = load_spec(write(tmp_path, text)).cells()
    bb = [c for c in cells if c.kind == "blackbox"]
    assert [c.config["dataset"] for c in bb] == ["digits", "mnist"]
    assert bb[0].config["options"] == {"lam": 0.1} and bb[0].config["rounds"] == 2
    tr = [c for c in cells if c.kind == "transfer"]
    assert [[m["name"] for m in c.config["models"]] for c in tr] == [["plain", "robust"]] * 2
    assert len(tr[0].dependencies) == 2


def test_example_specs_expand() -> None:
    examples = sorted((ROOT / "examples").glob("bench-*.toml"))
    assert examples, "examples/bench-*.toml"
    for path in examples:
        spec = load_spec(path)
        cells = spec.cells()
        assert cells and cells[0].kind == "train"
        assert {c.kind for c in cells} >= {"train", "attack"}


# ----------------------------------------------------------------------------------------------- spec errors


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    text = BASE.replace("n = 50", "n = = 50")
    err = error_of(tmp_path, text)
    assert err.line == line_of(text, "n = = 50")
    assert "TOML syntax error" in str(err) and f"bench.toml:{err.line}:" in str(err)


def test_unknown_defense_names_line_field_and_valid_names(tmp_path: Path) -> None:
    text = BASE.replace('defense = "fgsm-at"', 'defense = "fastat"')
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, 'defense = "fastat"'), "model[1].defense")
    assert "'fastat'" in str(err) and "fast-at" in str(err) and "pgd-at" in str(err)


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    text = BASE.replace("n = 50", 'n = "fifty"')
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, 'n = "fifty"'), "sweep.n")
    assert "integer" in err.reason and "fifty" in err.reason
    text = BASE.replace("steps = 5", "steps = 2.5")
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, "steps = 2.5"), "evaluation[1].params.steps")
    text = BASE.replace("eps = [0.1, 0.05]", 'eps = [0.1, "big"]')
    err = error_of(tmp_path, text)
    assert err.field == "evaluation[0].eps[1]" and err.line == line_of(text, '"big"')


def test_unknown_key_is_named(tmp_path: Path) -> None:
    text = BASE.replace('architecture = "softmax"', 'architecture = "softmax"\nepoch = 3')
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, "epoch = 3"), "model[0].epoch")
    assert "unknown key 'epoch'" in err.reason and "recipe" in err.reason
    text = BASE.replace("[model.recipe]\nepochs = 2", "[model.recipe]\nepocs = 2")
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, "epocs = 2"), "model[1].recipe.epocs")
    assert "epochs" in err.reason
    text = BASE.replace("steps = 5", "stepz = 5")
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line_of(text, "stepz = 5"), "evaluation[1].params.stepz")
    assert "steps" in err.reason
    text = BASE.replace("[sweep]", "[sweep]\nworkers = 3")
    assert error_of(tmp_path, text).field == "sweep.workers"
    text = BASE + "\n[[evalution]]\nattack = 'fgsm'\n"
    err = error_of(tmp_path, text)
    assert (err.field, err.line) == ("evalution", line_of(text, "[[evalution]]"))


@pytest.mark.parametrize(("old", "new", "field", "valid"), [
    ('attack = "pgd"', 'attack = "pgdd"', "evaluation[1].attack", ["pgd", "fgsm", "apgd"]),
    ('name = "mnist"', 'name = "minst"', "dataset[1].name", ["mnist", "digits", "cifar10"]),
    ('architecture = "mlp"', 'architecture = "mlpp"', "model[1].architecture", ["mlp", "cnn-small"]),
    ('models = ["robust"]', 'models = ["robus"]', "evaluation[1].models[0]", ["plain", "robust"]),
])
def test_unknown_names_list_the_valid_ones(tmp_path: Path, old: str, new: str, field: str, valid: list[str]) -> None:
    text = BASE.replace(old, new)
    err = error_of(tmp_path, text)
    assert (err.field, err.line) == (field, line_of(text, new))
    assert all(v in err.reason for v in valid), err.reason


def test_unknown_suite_lists_the_valid_ones(tmp_path: Path) -> None:
    pytest.importorskip("advlab.evaluate._suites")
    from advlab.evaluate._suites import list_suites

    text = BASE + '\n[[evaluation]]\nsuite = "nosuch"\neps = [0.1]\n'
    err = error_of(tmp_path, text)
    assert (err.field, err.line) == ("evaluation[2].suite", line_of(text, 'suite = "nosuch"'))
    assert all(name in err.reason for name in list_suites())


@pytest.mark.parametrize(("edit", "field", "phrase"), [
    (lambda t: t.replace("defense_eps = 0.1\n", ""), "model[1].defense", "defense_eps"),
    (lambda t: t.replace("defense_eps = 0.1", "defense_eps = -0.1"), "model[1].defense_eps", ">"),
    (lambda t: t.replace('name = "robust"', 'name = "plain"'), "model[1].name", "duplicate"),
    (lambda t: t.replace('architecture = "softmax"', 'architecture = "softmax"\ncheckpoint = "x"'), "model[0]",
     "exactly one"),
    (lambda t: t.replace("[model.recipe]", "[model.defense_options]\nalpha2 = 1\n[model.recipe]"),
     "model[1].defense_options.alpha2", "alpha"),
    (lambda t: t.replace("eps = [0.1, 0.05]\n", ""), "evaluation[0]", "eps"),
    (lambda t: t.replace("n = 50", "n = 0"), "sweep.n", ">= 1"),
    (lambda t: t + '\n[[model]]\nname = "c"\ncheckpoint = "missing/ck"\n', "model[2].checkpoint", "no checkpoint"),
    (lambda t: t + '\n[[blackbox]]\nmodel = "nobody"\neps = 0.1\n', "blackbox[0].model", "plain"),
    (lambda t: t.replace('attack = "fgsm"', 'attack = "fgsm"\nchecks = false'), "evaluation[0].checks", "suites"),
])
def test_semantic_errors(tmp_path: Path, edit: object, field: str, phrase: str) -> None:
    assert callable(edit)
    err = error_of(tmp_path, edit(BASE))
    assert err.field == field and phrase in err.reason, str(err)
    assert err.line is not None


def test_parse_spec_without_file_and_empty_specs() -> None:
    with pytest.raises(SpecError, match=r"^<spec>: model: the spec has no \[\[model\]\]"):
        parse_spec("[sweep]\nseed = 1\n")
    with pytest.raises(SpecError, match="evaluates nothing"):
        parse_spec('[[dataset]]\nname = "digits"\n[[model]]\nname = "a"\narchitecture = "softmax"\n')
    with pytest.raises(SpecError, match="need a dataset"):
        parse_spec('[[model]]\nname = "a"\narchitecture = "softmax"\n[[evaluation]]\nattack = "fgsm"\neps = 0.1\n')


def test_scikit_learn_models_are_fitted_with_their_options(tmp_path: Path) -> None:
    text = ('[[dataset]]\nname = "digits"\n[[model]]\nname = "tree"\narchitecture = "sklearn-tree"\n'
            'options = { max_depth = 4 }\n[[evaluation]]\nattack = "tree"\neps = [0.3]\n')
    train, attack = load_spec(write(tmp_path, text)).cells()
    assert train.config["model"]["recipe"] is None and train.config["model"]["model_options"] == {"max_depth": 4}
    assert attack.dependencies == (train.key,) and attack.config["attack"] == "tree"
    err = error_of(tmp_path, text.replace("max_depth = 4", "depth = 4"))
    assert err.field == "model[0].options.depth" and "max_depth" in err.reason
    err = error_of(tmp_path, text.replace("options =", "recipe = { epochs = 1 }\noptions ="))
    assert err.field == "model[0].recipe" and "scikit-learn" in err.reason


def test_suite_options(tmp_path: Path) -> None:
    text = BASE + '\n[[evaluation]]\nsuite = "quick"\neps = [0.1]\nactive_test = true\nadaptive = ["dlr"]\n'
    pytest.importorskip("advlab.evaluate._robustness")
    cells = [c for c in load_spec(write(tmp_path, text)).cells() if c.kind == "robustness"]
    assert len(cells) == 4
    cfg = cells[0].config
    assert (cfg["suite"], cfg["active_test"], cfg["adaptive"], cfg["checks"]) == ("quick", True, ["dlr"], True)
    assert [a["name"] for a in cfg["suite_definition"]["attacks"]] == ["apgd-ce", "apgd-t"]
    assert cfg["suite_definition"]["attacks"][0]["params"]["steps"] > 0  # the full definition
    err = error_of(tmp_path, text.replace('adaptive = ["dlr"]', 'adaptive = ["bdpa"]'))
    assert err.field == "evaluation[2].adaptive[0]" and "bpda" in err.reason and "eot" in err.reason
    err = error_of(tmp_path, text.replace('suite = "quick"', 'suite = "quick"\nnorm = "l0"'))
    assert err.field == "evaluation[2].norm" and "linf" in err.reason
    suite_file = tmp_path / "mine.toml"
    suite_file.write_text('name = "mine"\nnorms = ["linf"]\n[[attacks]]\nattack = "pgd"\nparams = { steps = 3 }\n')
    own = load_spec(write(tmp_path, BASE + '\n[[evaluation]]\nsuite = "mine.toml"\neps = [0.1]\n')).cells()
    definition = next(c for c in own if c.kind == "robustness").config["suite_definition"]
    assert definition["name"] == "mine" and definition["attacks"][0]["params"]["steps"] == 3
    err = error_of(tmp_path, BASE + '\n[[evaluation]]\nsuite = "missing.toml"\neps = [0.1]\n')
    assert err.field == "evaluation[2].suite" and "no suite file" in err.reason
