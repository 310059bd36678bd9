"""Adversarial training: every registered training defense makes a model more robust than standard training,
the engine's contract for steps (own updates, unlabelled examples), label leaking, catastrophic overfitting
and its check, ensemble adversarial training's static models, and bad input."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import advlab
from advlab.attacks import PGDConfig, craft, craftable
from advlab.cli.main import cli
from advlab.defenses import (
    CatastrophicOverfittingWarning,
    RobustnessMonitor,
    defense_recipe,
    defense_spec,
    list_defenses,
    train_defended,
)
from advlab.train import StepOutput, TrainState, fit, get_recipe, train_model

TRAINING = list_defenses("training")
EPS = 0.2  # L∞ budget on the 8x8 digits (values in [0, 1])
MODEL = "mlp"


def _digits() -> tuple[torch.Tensor, ...]:
    x, y = advlab.load_dataset("digits", "train")
    xt, yt = advlab.load_dataset("digits", "test")
    return x, y, xt, yt


def _pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf") -> float:
    r = advlab.attacks.pgd(model, x, y, eps=eps, norm=norm, steps=20, generator=torch.Generator().manual_seed(1))
    return float((r.clean_correct & ~r.success[0]).float().mean())


@pytest.fixture(scope="module")
def standard_mlp() -> torch.nn.Module:
    torch.set_num_threads(1)
    return train_model(MODEL, "digits", get_recipe(MODEL, "digits", epochs=10), seed=0).model


def test_registry_lists_every_training_defense() -> None:
    assert set(TRAINING) == {"fgsm-at", "rfgsm-at", "ensemble-at", "pgd-at", "fast-at", "free-at", "trades", "vat"}
    for name in TRAINING:
        spec = defense_spec(name)
        assert spec.build is not None and spec.config is not None
        assert spec.defaults() == {f.name: f.default for f in dataclasses.fields(spec.config)}


@pytest.mark.parametrize("name", [n for n in TRAINING if n not in ("vat", "ensemble-at")])
def test_defense_is_more_robust_than_standard_training(
    name: str, standard_mlp: torch.nn.Module, one_thread: None
) -> None:
    """Same model, data, epochs and seed: the defended model keeps more accuracy under PGD-20 at its budget."""
    _, _, xt, yt = _digits()
    epochs = 3 if name == "free-at" else 10  # free-at replays every batch 8 times
    run = train_defended(MODEL, "digits", name, eps=EPS, recipe=get_recipe(MODEL, "digits", epochs=epochs),
                         seed=0, held_out=100)
    base = _pgd_accuracy(standard_mlp, xt, yt, EPS)
    robust = _pgd_accuracy(run.model, xt, yt, EPS)
    assert robust >= base + 0.15, (name, base, robust)
    assert run.summary["test_accuracy"] >= 0.85
    assert run.summary["defense"]["name"] == name and run.summary["defense"]["eps"] == EPS
    monitor = run.summary["monitor"]
    assert len(monitor["epochs"]) == epochs
    assert {"held_clean_accuracy", "held_robust_accuracy"} <= set(run.history.epochs[-1].metrics)


def test_ensemble_at_rotates_static_models_and_is_robust(standard_mlp: torch.nn.Module, one_thread: None) -> None:
    _, _, xt, yt = _digits()
    statics = [train_model("softmax", "digits", get_recipe("softmax", epochs=5), seed=s).model for s in (1, 2)]
    run = train_defended(MODEL, "digits", "ensemble-at", eps=EPS, static=statics,
                         recipe=get_recipe(MODEL, "digits", epochs=10), seed=0, held_out=100)
    # batches take their examples in turn from the model and the two static models: 2 in 3 from static ones
    assert run.history.epochs[0].metrics["source_static"] == pytest.approx(2 / 3, abs=0.05)
    assert _pgd_accuracy(run.model, xt, yt, EPS) >= _pgd_accuracy(standard_mlp, xt, yt, EPS) + 0.05


def test_vat_uses_unlabelled_examples(one_thread: None) -> None:
    """With 100 labels, VAT on all training images beats standard training on the 100 labelled ones."""
    x, y, xt, yt = _digits()
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:100]
    recipe = get_recipe(MODEL, "digits", epochs=30, batch_size=64)
    supervised = train_model(MODEL, (x[keep], y[keep], xt, yt), recipe, dataset="digits", seed=0)
    vat = train_defended(MODEL, "digits", "vat", eps=1.0, labelled=100, held_out=0,
                         recipe=get_recipe(MODEL, "digits", epochs=30, batch_size=64), seed=0)
    assert vat.summary["defense"]["labelled"] == 100
    assert vat.history.epochs[-1].metrics["labelled_fraction"] < 0.2
    assert vat.summary["test_accuracy"] >= supervised.summary["test_accuracy"] + 0.02


def test_craft_is_the_attack_itself() -> None:
    """craft runs the registered attack's own kernel: the same examples as the attack function."""
    model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    config = PGDConfig(steps=5)
    ours = craft("pgd", model, x, y, eps=0.1, config=config, generator=torch.Generator().manual_seed(3))
    full = advlab.attacks.pgd(model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, full.x_adv[0])
    assert torch.equal(craft("fgsm", model, x, y, eps=0.1), advlab.attacks.fgsm(model, x, y, eps=0.1).x_adv[0])
    assert model.training  # mode restored
    assert {"fgsm", "pgd", "rfgsm"} <= set(craftable())
    with pytest.raises(ValueError, match="cannot craft"):
        craft("deepfool", model, x, y, eps=0.1)


def test_step_that_applies_its_own_updates_is_not_stepped_again() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    before = [p.detach().clone() for p in net.parameters()]

    def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: object) -> StepOutput:
        logits = model(x)
        return StepOutput(torch.nn.functional.cross_entropy(logits, y), logits=logits, applied=True)

    history = fit(net, torch.rand(64, 1, 2, 2), torch.randint(0, 2, (64,)), epochs=2, lr=0.5, step=step)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert len(history.epochs) == 2 and history.epochs[0].train_accuracy is not None


def test_unlabelled_examples_are_refused_by_a_supervised_step() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    y = torch.randint(0, 2, (32,))
    y[:4] = -1
    with pytest.raises(ValueError, match=">= 0"):
        fit(net, torch.rand(32, 1, 2, 2), y, epochs=1)


def test_label_leaking_with_true_labels(one_thread: None) -> None:
    """Kurakin et al. 2017: FGSM training with the true labels lets the perturbation carry the label, so the
    model becomes more accurate on FGSM examples of the true label than on clean inputs (here: an MLP trained on
    FGSM examples only, at a budget large enough for the perturbation to dominate); crafting with the model's own
    predictions (the default) does not leak."""
    _, _, xt, yt = _digits()
    eps = 0.5
    recipe = get_recipe(MODEL, "digits", epochs=30)

    def accuracies(labels: str) -> tuple[float, float]:
        model = train_defended(MODEL, "digits", "fgsm-at", eps=eps, options={"labels": labels, "alpha": 0.0},
                               recipe=recipe, seed=0, held_out=0).model
        r = advlab.attacks.fgsm(model, xt, yt, eps=eps)
        return float(r.clean_correct.float().mean()), float((r.adv_pred[0] == yt).float().mean())

    leaky_clean, leaky_adv = accuracies("true")
    safe_clean, safe_adv = accuracies("predicted")
    assert leaky_adv >= leaky_clean + 0.05, (leaky_clean, leaky_adv)  # the leak
    assert safe_adv < safe_clean, (safe_clean, safe_adv)  # no leak


def test_catastrophic_overfitting_is_flagged(shared_data_root: Path, one_thread: None) -> None:
    """Plain FGSM training (no random start, true labels) at eps 0.3 on MNIST: FGSM accuracy climbs while PGD
    accuracy is near zero, and the held-out check flags it (without restoring, to look at the overfitted model)."""
    x, y = advlab.load_dataset("mnist", "test", root=shared_data_root)
    xt, yt = x[:500], y[:500]
    eps = 0.3
    with pytest.warns(CatastrophicOverfittingWarning):
        run = train_defended("cnn-small", "mnist", "fgsm-at", eps=eps, options={"labels": "true", "alpha": 0.0},
                             recipe=get_recipe("cnn-small", "mnist", epochs=1), seed=0, n_train=12000,
                             held_out=300, check_overfitting=True, restore_best=False, data_root=shared_data_root)
    report = run.summary["monitor"]
    assert report["catastrophic_overfitting"]
    assert report["events"][-1] | {"reason": ""} == {"epoch": 0, "event": "catastrophic_overfitting",
                                                     "signature": "masking", "reason": ""}
    r = advlab.attacks.fgsm(run.model, xt, yt, eps=eps)
    fgsm_acc = float((r.clean_correct & ~r.success[0]).float().mean())
    pgd_acc = _pgd_accuracy(run.model, xt, yt, eps)
    assert fgsm_acc >= 0.5 and pgd_acc <= 0.05, (fgsm_acc, pgd_acc)


def test_fast_at_check_on_by_default_and_quiet_when_robust(one_thread: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatastrophicOverfittingWarning)
        run = train_defended(MODEL, "digits", "fast-at", eps=EPS, recipe=get_recipe(MODEL, "digits", epochs=5),
                             seed=0, held_out=100)
    assert run.summary["monitor"]["catastrophic_overfitting"] is False
    assert run.summary["monitor"]["best_epoch"] is not None


def test_recipes_and_recorded_config(tmp_path: Path, one_thread: None) -> None:
    assert defense_recipe("fast-at", "cnn-small", "mnist").schedule == "onecycle"
    assert defense_recipe("fast-at", "cnn-small", "mnist", epochs=2).epochs == 2
    out = tmp_path / "ck"
    result = CliRunner().invoke(cli, ["train", "--model", "softmax", "--data", "digits", "--defense", "trades",
                                      "--eps", "0.1", "--beta", "2", "--steps", "3", "--epochs", "1",
                                      "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["extra"]["defense"] == {"name": "trades", "eps": 0.1, "norm": "linf",
                                        "options": {"beta": 2.0, "steps": 3, "step_size": None},
                                        "static": [], "labelled": None, "held_out": 143}
    assert len(meta["extra"]["monitor"]["epochs"]) == 1
    loaded = advlab.load_checkpoint(out)
    assert loaded(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--defense", "fast-at", "--eps", "1.5"], "exceeds the largest linf distance"),
        (["--defense", "fast-at", "--eps", "0.1", "--beta", "3"], "does not take --beta"),
        (["--defense", "fast-at"], "needs a budget"),
        (["--beta", "3"], "add --defense"),
        (["--eps", "0.1"], "add --defense"),
        (["--defense", "pgd-at", "--eps", "0.1", "--labelled", "10"], "semi-supervised"),
        (["--defense", "vat", "--eps", "1", "--norm", "linf"], "defends the norm"),
        (["--defense", "ensemble-at", "--eps", "0.1"], "needs static models"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "ck"
    result = CliRunner().invoke(cli, ["train", "--model", "softmax", "--epochs", "1", "--no-progress",
                                      "--out", str(out), *args])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (out / "model.json").exists()


def test_static_models_must_match_the_data(tmp_path: Path, one_thread: None) -> None:
    wrong_classes = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=3)
    with pytest.raises(ValueError, match=r"returns \(3,\) outputs per example but the data have 10 classes"):
        train_defended("softmax", "digits", "ensemble-at", eps=0.1, static=[wrong_classes], held_out=0)
    wrong_shape = advlab.create_model("softmax", in_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match=r"inputs of shape \(1, 28, 28\)"):
        train_defended("softmax", "digits", "ensemble-at", eps=0.1, static=[wrong_shape], held_out=0)
    with pytest.raises(ValueError, match="has no option"):
        train_defended("softmax", "digits", "fgsm-at", eps=0.1, options={"beta": 1.0})
    with pytest.raises(ValueError, match="unknown training defense"):
        train_defended("softmax", "digits", "jpeg", eps=0.1)


def test_list_defenses_shows_every_defense_with_its_kind() -> None:
    result = CliRunner().invoke(cli, ["list", "defenses"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:]}
    assert lines == {name: defense_spec(name).kind for name in list_defenses()}
    assert set(lines.values()) == {"training", "failing", "detector", "architecture"}


def test_monitor_restores_the_most_robust_epoch_on_a_collapse() -> None:
    """Scripted held-out numbers: PGD accuracy 0.3, 0.6, then 0.2 (a fall of 0.4 > drop 0.2): flagged as a
    collapse at the third epoch, training stops and the second epoch's weights come back."""
    from advlab.defenses import RobustnessMonitor
    from advlab.train import TrainState

    net = torch.nn.Linear(2, 2)
    script = iter([0.3, 0.6, 0.2])

    class Scripted(RobustnessMonitor):
        def measure(self, model: torch.nn.Module) -> dict[str, float]:
            value = next(script)
            return {"held_clean_accuracy": 0.9, "held_fgsm_accuracy": value, "held_robust_accuracy": value}

    monitor = Scripted(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), eps=0.1, check_overfitting=True,
                       restore_best=True)
    state = TrainState(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), scheduler=None, epochs=5,
                       steps_per_epoch=1)
    saved = {}
    for epoch in range(3):
        state.epoch = epoch
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        saved[epoch] = net.weight.detach().clone()
        if epoch == 2:
            with pytest.warns(CatastrophicOverfittingWarning, match="restoring the most robust epoch"):
                monitor.on_epoch_end(state)
        else:
            monitor.on_epoch_end(state)
    assert state.stop_training and monitor.restored_epoch == 1 and monitor.best_epoch == 1
    assert torch.equal(net.weight, saved[1])
    assert monitor.report()["events"][0]["signature"] == "collapse"


def _scripted(values: list[tuple[float, float]], restore_best: bool = False) -> tuple[RobustnessMonitor, TrainState]:
    """A monitor whose held-out numbers are scripted ``(fgsm, pgd)`` pairs, and the loop state it sees."""
    script = iter(values)

    class Scripted(RobustnessMonitor):
        def measure(self, model: torch.nn.Module) -> dict[str, float]:
            fgsm_acc, pgd_acc = next(script)
            return {"held_clean_accuracy": 0.99, "held_fgsm_accuracy": fgsm_acc, "held_robust_accuracy": pgd_acc}

    net = torch.nn.Linear(2, 2)
    monitor = Scripted(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), eps=0.1, check_overfitting=True,
                       restore_best=restore_best)
    state = TrainState(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), scheduler=None,
                       epochs=len(values), steps_per_epoch=1)
    return monitor, state


def test_masking_in_early_epochs_that_training_recovers_from_is_no_verdict() -> None:
    """fast-at on MNIST passes through the masking signature in its first epochs (FGSM 0.90, PGD 0.04) and
    recovers: recorded as events, no warning, not flagged."""
    monitor, state = _scripted([(0.9, 0.04), (0.9, 0.0), (0.92, 0.5), (0.95, 0.8)], restore_best=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatastrophicOverfittingWarning)
        for epoch in range(4):
            state.epoch = epoch
            monitor.on_epoch_end(state)
        monitor.on_fit_end(state)
    report = monitor.report()
    assert [e["event"] for e in report["events"]] == ["masking", "masking"]
    assert report["catastrophic_overfitting"] is False and report["best_epoch"] == 3


def test_masking_in_the_returned_model_is_flagged_at_the_end() -> None:
    monitor, state = _scripted([(0.7, 0.02), (0.8, 0.01)])
    for epoch in range(2):
        state.epoch = epoch
        monitor.on_epoch_end(state)
    with pytest.warns(CatastrophicOverfittingWarning, match="epoch 2: FGSM accuracy 0.800 but PGD accuracy 0.010"):
        monitor.on_fit_end(state)
    assert monitor.overfitted
