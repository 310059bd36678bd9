"""``advlab attack``: JSON schema and values, budgets given three ways, targeted runs, the image grid, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from advlab.attacks import attack_spec, list_attacks
from advlab.cli.attack_cmd import HYPER, _MultiValueCommand, attack_command, parse_eps
from advlab.evaluate import json_safe
from advlab.report import pick_examples, save_attack_grid

N = 60  # examples attacked per run: small, so each run takes well under a second of attack time


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for a few epochs on the bundled digits data (about 95% test accuracy)."""
    from advlab.data import load_dataset
    from advlab.models import create_model, save_checkpoint
    from advlab.train import fit

    x, y = load_dataset("digits", "train")
    model = create_model("mlp", dataset="digits", hidden=(64,), generator=torch.Generator().manual_seed(0))
    fit(model, x, y, epochs=4, batch_size=64, lr=3e-3, seed=0)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt"), dataset="digits", seed=0)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(attack_command, [str(a) for a in args])


def run_ok(checkpoint: Path, out: Path, *args: str) -> dict[str, Any]:
    result = invoke("--checkpoint", checkpoint, "--json", out, "--n", str(N), "--no-progress", *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert str(out) in result.output
    return json.loads(out.read_text())


def check_schema(payload: dict[str, Any], attack: str, eps: list[float]) -> None:
    assert payload["attack"] == attack
    assert payload["n"] == payload["config"]["n"]
    assert 0.0 <= payload["clean_accuracy"] <= 1.0
    assert [row["eps"] for row in payload["results"]] == pytest.approx(eps)
    for row in payload["results"]:
        assert set(row) == {"eps", "robust_accuracy", "success_rate", "median_distance", "mean_distance"}
        assert 0.0 <= row["robust_accuracy"] <= payload["clean_accuracy"] + 1e-9
        assert 0.0 <= row["success_rate"] <= 1.0
        if row["median_distance"] is not None:
            assert 0.0 <= row["median_distance"] <= row["eps"] * (1 + 1e-4) + 1e-6
    assert payload["n_forward"] > 0 and payload["n_backward"] > 0
    assert payload["seconds"] > 0 and payload["examples_per_second"] > 0
    cfg = payload["config"]
    for key in ("checkpoint", "model", "model_hash", "dataset", "split", "seed", "device", "versions", "norm"):
        assert key in cfg, key
    assert cfg["model"] == "mlp" and cfg["dataset"] == "digits" and cfg["split"] == "test"
    assert len(cfg["model_hash"]) == 64
    assert set(cfg["versions"]) >= {"advlab", "torch"}


# ---------------------------------------------------------------- argument parsing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--eps", "0.1", "0.2", "0.3", "--n", "5"], ["--eps", "0.1", "--eps", "0.2", "--eps", "0.3", "--n", "5"]),
        (["--eps=0.1", "0.2"], ["--eps=0.1", "--eps", "0.2"]),
        (["--eps", "0.1,0.2", "--eps", "0.3"], ["--eps", "0.1,0.2", "--eps", "0.3"]),
        (["--eps", "0.1", "-0.2"], ["--eps", "0.1", "--eps", "-0.2"]),  # kept as a value, then rejected
        (["--eps", "0.1", "--", "0.2"], ["--eps", "0.1", "--", "0.2"]),
        (["--steps", "3", "--eps", "0.1"], ["--steps", "3", "--eps", "0.1"]),
    ],
)
def test_eps_tokens_are_expanded(args: list[str], expected: list[str]) -> None:
    assert _MultiValueCommand.expand(args) == expected


def test_parse_eps() -> None:
    assert parse_eps(["0.1", "0.2, 0.3", "1e-2"]) == (0.1, 0.2, 0.3, 0.01)
    for bad in (["abc"], ["-0.1"], ["nan"], [","]):
        with pytest.raises(Exception, match=r"eps|budget"):
            parse_eps(bad)


def test_json_safe_turns_nan_into_null() -> None:
    rows = [{"median_distance": math.nan, "robust_accuracy": 1.0}]
    text = json.dumps(json_safe({"rows": rows, "t": (1.0, float("inf")), "x": torch.tensor([0.5])}), allow_nan=False)
    back = json.loads(text)
    assert back["rows"][0]["median_distance"] is None and back["rows"][0]["robust_accuracy"] == 1.0
    assert back["t"] == [1.0, None] and back["x"] == [0.5]


# ---------------------------------------------------------------- runs


def test_fgsm_three_budgets_space_separated(checkpoint: Path, tmp_path: Path) -> None:
    payload = run_ok(checkpoint, tmp_path / "fgsm.json", "--attack", "fgsm", "--eps", "0", "0.1", "0.3")
    check_schema(payload, "fgsm", [0.0, 0.1, 0.3])
    assert payload["n"] == N
    rows = payload["results"]
    assert rows[0]["robust_accuracy"] == pytest.approx(payload["clean_accuracy"])  # eps = 0 is the identity
    assert rows[2]["robust_accuracy"] < rows[0]["robust_accuracy"]
    assert rows[2]["median_distance"] == pytest.approx(0.3, rel=1e-4)
    assert payload["n_backward"] == N  # one gradient at the clean input, shared by the budgets
    assert payload["config"]["loss"] == "ce" and payload["config"]["norm"] == "linf"


def test_budget_forms_and_batching_agree(checkpoint: Path, tmp_path: Path) -> None:
    a = run_ok(checkpoint, tmp_path / "a.json", "--attack", "fgsm", "--eps", "0.1", "--eps", "0.2")
    b = run_ok(checkpoint, tmp_path / "b.json", "--attack", "fgsm", "--eps", "0.1,0.2", "--batch-size", "7")
    assert a["results"] == b["results"]  # merged per-batch results equal the one-batch run
    assert (a["n_forward"], a["n_backward"]) == (b["n_forward"], b["n_backward"])
    assert b["config"]["batch_size"] == 7


def test_pgd_restarts_and_grid(checkpoint: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    grid = tmp_path / "sub" / "pgd.png"
    payload = run_ok(
        checkpoint, tmp_path / "pgd.json", "--attack", "pgd", "--eps", "0.05", "0.1", "0.2",
        "--steps", "5", "--restarts", "2", "--grid", str(grid),
    )
    check_schema(payload, "pgd", [0.05, 0.1, 0.2])
    robust = [row["robust_accuracy"] for row in payload["results"]]
    assert robust == sorted(robust, reverse=True) and robust[-1] < robust[0]
    assert payload["config"]["steps"] == 5 and payload["config"]["restarts"] == 2
    assert payload["n_backward"] >= 3 * N * 5  # at least steps gradients per budget and example
    image = imread(str(grid))
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 800
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas


@pytest.mark.parametrize("mode", ["random", "least-likely"])
def test_targeted_modes(checkpoint: Path, tmp_path: Path, mode: str) -> None:
    attack = "pgd"
    extra = ["--steps", "10"]
    if mode == "random":
        extra += ["--grid", str(tmp_path / "t.png")]
    payload = run_ok(checkpoint, tmp_path / "t.json", "--attack", attack, "--eps", "0.1", "0.3",
                     "--targeted", mode, *extra)
    check_schema(payload, attack, [0.1, 0.3])
    assert payload["targeted"] is True and payload["config"]["targeted"] is True
    assert payload["config"]["target_mode"] == mode and payload["n"] == N and payload["n_excluded"] == 0
    high = payload["results"][1]
    assert high["success_rate"] > 0
    # hitting a target other than the true class means losing accuracy w.r.t. the true labels
    assert high["robust_accuracy"] <= 1 - high["success_rate"] + 1e-9
    if mode == "random":
        assert (tmp_path / "t.png").stat().st_size > 10_000


def test_targeted_fixed_class_excludes_that_class(checkpoint: Path, tmp_path: Path) -> None:
    from advlab.data import load_dataset

    _, y = load_dataset("digits", "test")
    payload = run_ok(checkpoint, tmp_path / "c.json", "--attack", "fgsm", "--eps", "0.3", "--targeted", "3")
    n_class = int((y[:N] == 3).sum())
    assert n_class > 0
    assert payload["n_excluded"] == n_class and payload["n"] == N - n_class
    assert payload["config"]["n_requested"] == N


def test_min_norm_attack(checkpoint: Path, tmp_path: Path) -> None:
    payload = run_ok(checkpoint, tmp_path / "df.json", "--attack", "deepfool", "--eps", "0.5", "2", "--norm", "l2")
    check_schema(payload, "deepfool", [0.5, 2.0])
    small, large = payload["results"]
    assert large["success_rate"] >= small["success_rate"] and large["success_rate"] > 0.5
    assert 0 < large["median_distance"] <= 2.0 + 1e-4
    assert payload["config"]["norm"] == "l2"


def test_command_is_registered() -> None:
    from advlab.cli.main import cli

    assert cli.commands["attack"] is attack_command


def test_illc_runs_from_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    payload = run_ok(checkpoint, tmp_path / "illc.json", "--attack", "illc", "--eps", "0.1", "0.3", "--steps", "5",
                     "--step-size", "0.06")
    check_schema(payload, "illc", [0.1, 0.3])
    assert payload["targeted"] is True  # toward the least-likely classes it chose itself
    assert payload["config"]["steps"] == 5 and payload["results"][1]["success_rate"] > 0


def test_every_hyper_parameter_is_a_typed_option() -> None:
    """Each field of each registered attack's config is an option of its own type: none is hand-listed."""
    options = {p.name: p for p in attack_command.params}
    for name in list_attacks():
        for field, default in attack_spec(name).defaults().items():
            assert field in options, f"{name}.{field} has no option"
            assert name in HYPER[field][1]
            if isinstance(default, bool):
                assert options[field].secondary_opts, field  # --flag/--no-flag
            elif isinstance(default, int):
                assert options[field].type.name == "integer", field


@pytest.mark.parametrize(
    ("args", "key", "value"),
    [
        (["--attack", "pgd", "--norm", "l2", "--steps", "1"], "steps", 1),
        (["--attack", "pgd", "--norm", "l2", "--steps", "1"], "norm", "l2"),
        (["--attack", "pgd", "--steps", "2", "--no-random-start"], "random_start", False),
        (["--attack", "pgd", "--steps", "2", "--loss", "margin"], "loss", "margin"),
        (["--attack", "apgd", "--steps", "2", "--momentum", "0.5"], "momentum", 0.5),
        (["--attack", "rfgsm", "--random-step", "0.05"], "random_step", 0.05),
        (["--attack", "cw_linf", "--steps", "2", "--confidence", "5"], "confidence", 5.0),
    ],
)
def test_options_take_effect(checkpoint: Path, tmp_path: Path, args: list[str], key: str, value: Any) -> None:
    payload = run_ok(checkpoint, tmp_path / "o.json", *args, "--eps", "0.1")
    assert payload["config"][key] == value


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "nope", "--eps", "0.1"], "'nope' is not one of"),
        (["--attack", "fgsm", "--eps", "abc"], "not a number"),
        (["--attack", "fgsm", "--eps", "0.1", "-0.2"], "non-negative"),
        (["--attack", "fgsm", "--eps", "0.1", "--restarts", "2"], "does not take --restarts"),
        (["--attack", "fgsm", "--eps", "0.1", "--confidence", "1"], "does not take --confidence; it takes --loss"),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "1.5"], "'1.5' is not a valid integer"),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], "steps must be an integer >= 1"),
        (["--attack", "fgsm", "--eps", "0.1", "--norm", "l2"], "supported: linf"),
        (["--attack", "fgsm", "--eps", "0.1", "--targeted", "12"], "out of range"),
        (["--attack", "fgsm", "--eps", "0.1", "--targeted", "most-likely"], "least-likely, random"),
        (["--attack", "fgsm", "--eps", "0.1", "--data", "nope"], "nope"),
        (["--attack", "fgsm", "--eps", "0.1", "--loss", "hinge"], "unknown loss 'hinge'"),
        (["--attack", "deepfool", "--eps", "0.1", "--targeted", "random"], "no targeted mode"),
    ],
)
def test_errors_are_clean(checkpoint: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("--checkpoint", checkpoint, "--json", tmp_path / "x.json", "--n", "5", "--no-progress", *args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)  # a click error, not a traceback
    assert message in result.output
    assert not (tmp_path / "x.json").exists()


def test_missing_checkpoint(tmp_path: Path) -> None:
    result = invoke("--checkpoint", tmp_path / "nowhere", "--attack", "fgsm", "--eps", "0.1",
                    "--json", tmp_path / "x.json")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "does not exist" in result.output and "--checkpoint" in result.output


def test_missing_eps(checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("--checkpoint", checkpoint, "--attack", "fgsm", "--json", tmp_path / "x.json")
    assert result.exit_code == 2 and "--eps" in result.output


# ---------------------------------------------------------------- the grid itself


@pytest.mark.parametrize("channels", [1, 3])
def test_save_attack_grid(tmp_path: Path, channels: int) -> None:
    from matplotlib.image import imread

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, channels, 16, 16, generator=gen)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    path = save_attack_grid(
        x, x_adv, torch.arange(10), torch.randn(10, 10, generator=gen), torch.randn(10, 10, generator=gen),
        tmp_path / "g.png", class_names=[f"class {i}" for i in range(10)], max_examples=6, title="synthetic",
    )
    image = imread(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] >= 400 and 600 <= image.shape[1] <= 1600  # 3 rows, 6 columns at 100 dpi
    assert float(image[..., :3].std()) > 0.05


def test_save_attack_grid_rejects_bad_input(tmp_path: Path) -> None:
    x = torch.rand(2, 2, 8, 8)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        save_attack_grid(x, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 3), tmp_path / "a")
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="rows"):
        save_attack_grid(x, x, torch.zeros(3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 3), tmp_path / "a")
    y, logits = torch.zeros(2, dtype=torch.long), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="max_examples must be an integer >= 1, got 0"):
        save_attack_grid(x, x, y, logits, logits, tmp_path / "a", max_examples=0)
    with pytest.raises(TypeError, match=r"max_examples must be an integer, got float 2\.0"):
        save_attack_grid(x, x, y, logits, logits, tmp_path / "a", max_examples=2.0)  # type: ignore[arg-type]


def test_pick_examples_prefers_correct_ones() -> None:
    correct = torch.tensor([False, True, False, True, True])
    assert pick_examples(correct, 4).tolist() == [1, 3, 4, 0]
