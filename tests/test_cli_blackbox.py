"""``advlab blackbox`` and ``advlab transfer``: JSON fields and values, the heatmap, and one-line errors."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from test_cli_errors import cli, error_line


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    monkeypatch.setenv("ADVLAB_DEFAULT_MALLOC", "1")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small digits checkpoints (an MLP and softmax regression) and a CIFAR-shaped one."""
    from advlab.data import load_dataset
    from advlab.models import create_model, save_checkpoint
    from advlab.train import fit

    base = tmp_path_factory.mktemp("cli-blackbox")
    x, y = load_dataset("digits", "train")
    out = {}
    for name, arch, opts in (("mlp", "mlp", {"hidden": (64,)}), ("soft", "softmax", {})):
        model = create_model(arch, dataset="digits", generator=torch.Generator().manual_seed(0), **opts)
        fit(model, x, y, epochs=4, batch_size=64, lr=3e-3, seed=0)
        out[name] = save_checkpoint(model, base / name, dataset="digits", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cifar = create_model("softmax", dataset="cifar10", generator=torch.Generator().manual_seed(0))
        out["cifar"] = save_checkpoint(cifar, base / "cifar", dataset="cifar10")
    return out


SMALL = ["--seed-size", "50", "--rounds", "2", "--epochs", "2", "--substitute", "softmax", "--n", "60",
         "--no-progress"]


# ------------------------------------------------------------------------------------------ blackbox


def test_blackbox_writes_the_record(capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bb.json"
    run = cli(capsys, "blackbox", "--checkpoint", ckpts["mlp"], *SMALL, "--attack", "fgsm", "--eps", "0.3",
              "--json", out)
    assert run.code == 0, run
    p = json.loads(out.read_text())
    # 50 * 2 ** (2 - 1) to train; by default the oracle labels the attacked points too
    assert p["queries"] == 100 and p["attack_queries"] == p["n"] and p["craft_labels"] == "oracle"
    for key in ("substitute_accuracy", "substitute_agreement", "oracle_misclassification", "oracle_clean_accuracy"):
        assert 0.0 <= p[key] <= 1.0
    assert p["n"] == 60 and p["attack"] == "fgsm" and p["eps"] == 0.3 and p["norm"] == "linf"
    assert [row["points"] for row in p["history"]] == [50, 100]
    cfg = p["config"]
    assert cfg["dataset"] == "digits" and cfg["model"] == "mlp" and cfg["seed_size"] == 50
    assert len(cfg["seed_indices"]) == 50 and cfg["substitute"]["model"] == "softmax"
    assert "oracle misclassification" in run.out and str(out) in run.out
    # the same seed gives the same record
    again = tmp_path / "again.json"
    assert cli(capsys, "blackbox", "--checkpoint", ckpts["mlp"], *SMALL, "--json", again).code == 0
    q = json.loads(again.read_text())
    assert q["oracle_misclassification"] == p["oracle_misclassification"]
    assert q["substitute_accuracy"] == p["substitute_accuracy"]


def test_blackbox_budget_and_attack_options(
    capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bb.json"
    run = cli(capsys, "blackbox", "--checkpoint", ckpts["mlp"], "--seed-size", "50", "--rounds", "4", "--epochs", "1",
              "--substitute", "softmax", "--n", "40", "--no-progress", "--max-queries", "250", "--attack", "pgd",
              "--steps", "3", "--craft-labels", "oracle", "--json", out)
    assert run.code == 0, run
    p = json.loads(out.read_text())
    assert p["stopped_early"] and p["queries"] == 200 and len(p["history"]) == 3 and "stopped early" in run.out
    assert p["config"]["attack_config"]["steps"] == 3
    assert p["attack_queries"] == 40 and p["queries"] + p["attack_queries"] <= 250


def test_blackbox_ensemble_and_training_options(
    capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "bb.json"
    run = cli(capsys, "blackbox", "--checkpoint", ckpts["mlp"], *SMALL, "--ensemble", "3", "--final-epochs", "3",
              "--shift", "1", "--weight-decay", "1e-4", "--loss", "margin", "--json", out)
    assert run.code == 0, run
    p = json.loads(out.read_text())
    sub = p["config"]["substitute"]
    assert (sub["ensemble"], sub["final_epochs"], sub["shift"], sub["recipe"]["weight_decay"]) == (3, 3, 1, 1e-4)
    assert p["queries"] == 100 and p["attack_queries"] == p["n"]  # the extra members cost no query
    assert p["config"]["attack_config"]["loss"] == "margin"
    assert "ensemble_accuracy" in p["history"][-1] and "ensemble of 3 substitutes" in run.out


BLACKBOX_ERRORS: list[tuple[str, list[str], int, list[str]]] = [
    ("unknown-attack", ["--attack", "nope"], 2, ["--attack", "nope", "fgsm", "pgd"]),
    ("unknown-substitute", ["--substitute", "nope"], 2, ["--substitute", "nope", "mlp"]),
    ("rounds-zero", ["--rounds", "0"], 2, ["--rounds"]),
    ("eps-nan", ["--eps", "nan"], 2, ["--eps", "finite"]),
    ("eps-negative", ["--eps", "-0.1"], 2, ["--eps"]),
    ("lam-zero", ["--lam", "0"], 2, ["--lam"]),
    ("ensemble-zero", ["--ensemble", "0"], 2, ["--ensemble"]),
    ("shift-negative", ["--shift", "-1"], 2, ["--shift"]),
    ("seed-size-zero", ["--seed-size", "0"], 2, ["--seed-size"]),
    ("budget-below-seed", ["--max-queries", "10"], 2, ["--max-queries", "seed"]),
    ("norm-unsupported", ["--norm", "l2"], 2, ["--norm", "fgsm"]),
    ("option-not-taken", ["--steps", "3"], 2, ["--steps"]),
    ("json-exists", ["--json", "{existing}"], 2, ["--json", "exists", "--overwrite"]),
    ("seed-size-too-big", ["--seed-size", "400"], 1, ["seed_size", "400"]),
    ("data-other-shape", ["--data", "cifar10", "--data-root", "{tmp}/nodata"], 1, []),
]


@pytest.mark.parametrize(("args", "code", "needles"), [c[1:] for c in BLACKBOX_ERRORS],
                         ids=[c[0] for c in BLACKBOX_ERRORS])
def test_blackbox_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path, args: list[str], code: int,
    needles: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    existing = tmp_path / "existing.json"
    existing.write_text("{}\n")
    args = [a.format(existing=existing, tmp=tmp_path) for a in args]
    base = ["blackbox", "--checkpoint", ckpts["mlp"], "--no-progress", "--n", "20", "--epochs", "1", "--rounds", "1"]
    if "--json" not in args:
        base += ["--json", tmp_path / "out.json"]
    run = cli(capsys, *base, *args)
    line = error_line(run)
    assert run.code == code, run
    for needle in needles:
        assert needle in line, line
    assert existing.read_text() == "{}\n" and not (tmp_path / "out.json").exists()


# ------------------------------------------------------------------------------------------ transfer


def test_transfer_writes_matrix_and_heatmap(
    capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    out, png = tmp_path / "m.json", tmp_path / "m.png"
    run = cli(capsys, "transfer", "--checkpoint", ckpts["mlp"], "--checkpoint", ckpts["soft"], "--name", "MLP",
              "--name", "LR", "--attack", "pgd", "--steps", "5", "--eps", "0.2", "--n", "80", "--json", out,
              "--png", png)
    assert run.code == 0, run
    p = json.loads(out.read_text())
    assert p["names"] == ["MLP", "LR"] and p["sources"] == ["MLP", "LR"] and p["n"] == 80
    assert p["eps"] == 0.2 and p["norm"] == "linf" and p["attacks"] == {"MLP": "pgd", "LR": "pgd"}
    assert len(p["rates"]) == 2 and all(0.0 <= v <= 1.0 for row in p["rates"] for v in row)
    assert p["white_box"]["MLP"] == p["rates"][0][0] > 0.5
    assert p["config"]["attack_options"] == {"pgd": {"steps": 5}}
    assert set(p["config"]["checkpoints"]) == {"MLP", "LR"} and p["config"]["dataset"] == "digits"
    assert imread(png).ndim == 3
    assert "white-box" in run.out and str(png) in run.out
    # existing outputs are kept without --overwrite
    again = cli(capsys, "transfer", "--checkpoint", ckpts["mlp"], "--eps", "0.1", "--json", out)
    assert "exists" in error_line(again)
    assert cli(capsys, "transfer", "--checkpoint", ckpts["mlp"], "--eps", "0.1", "--n", "20", "--json", out,
               "--overwrite").code == 0


TRANSFER_ERRORS: list[tuple[str, list[str], int, list[str]]] = [
    ("unknown-attack", ["--attack", "nope"], 2, ["--attack", "nope", "pgd"]),
    ("other-shapes", ["--checkpoint", "{cifar}"], 1, ["different input shapes", "(1, 8, 8)", "(3, 32, 32)"]),
    ("names-count", ["--name", "a"], 2, ["--name", "1 name"]),
    ("names-duplicate", ["--name", "a", "--name", "a"], 1, ["unique", "'a'"]),
    ("eps-nan", ["--eps", "nan"], 2, ["--eps"]),
    ("n-zero", ["--n", "0"], 2, ["--n"]),
    ("png-exists", ["--png", "{existing}"], 2, ["--png", "exists"]),
    ("png-equals-json", ["--png", "{tmp}/out.json"], 2, ["--png", "own file"]),
    ("norm-unsupported", ["--attack", "fgsm", "--norm", "l2"], 2, ["--norm"]),
]


@pytest.mark.parametrize(("args", "code", "needles"), [c[1:] for c in TRANSFER_ERRORS],
                         ids=[c[0] for c in TRANSFER_ERRORS])
def test_transfer_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], ckpts: dict[str, Path], tmp_path: Path, args: list[str], code: int,
    needles: list[str],
) -> None:
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"old")
    names = {"existing": str(existing), "tmp": str(tmp_path), "cifar": str(ckpts["cifar"])}
    args = [a.format(**names) for a in args]
    base = ["transfer", "--checkpoint", ckpts["mlp"], "--checkpoint", ckpts["soft"], "--n", "10",
            "--json", tmp_path / "out.json"]
    if "--eps" not in args:
        base += ["--eps", "0.1"]
    run = cli(capsys, *base, *args)
    line = error_line(run)
    assert run.code == code, run
    for needle in needles:
        assert needle in line, line
    assert existing.read_bytes() == b"old" and not (tmp_path / "out.json").exists()
