"""Tests of the training engine (advlab.train) and the ``train`` command."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from torch import Tensor, nn

from advlab.data import load_dataset
from advlab.models import model_hash
from advlab.models.classifier import Classifier
from advlab.train import (
    Callback,
    Recipe,
    StepContext,
    StepOutput,
    TrainState,
    evaluate_accuracy,
    fit,
    get_recipe,
    make_optimizer,
    make_scheduler,
    save_run,
    standard_step,
    train_model,
)
from advlab.train.loop import _batch_slices

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread per test

# ---------------------------------------------------------------- helpers


def _blobs(n: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two Gaussian blobs in [0, 1]^4 shaped (N, 1, 2, 2): linearly separable, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    centre = torch.where(y[:, None] == 1, 0.7, 0.3)
    x = (centre + 0.08 * torch.randn(n, 4, generator=g)).clamp(0, 1)
    return x.reshape(n, 1, 2, 2), y


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return net


class ModeProbe(nn.Module):
    """Linear model recording ``self.training`` at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        out: Tensor = self.lin(x.flatten(1))
        return out


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.lrs: list[float] = []

    def on_fit_start(self, state: TrainState) -> None:
        self.events.append(("fit_start", state.epoch, state.step))

    def on_epoch_start(self, state: TrainState) -> None:
        self.events.append(("epoch_start", state.epoch, state.step))

    def on_batch_end(self, state: TrainState) -> None:
        self.events.append(("batch_end", state.epoch, state.step))
        self.lrs.append(state.metrics["lr"])
        assert state.output is not None and "loss" in state.metrics

    def on_epoch_end(self, state: TrainState) -> None:
        self.events.append(("epoch_end", state.epoch, state.step))
        assert state.history[-1].epoch == state.epoch

    def on_fit_end(self, state: TrainState) -> None:
        self.events.append(("fit_end", state.epoch, state.step))


# ---------------------------------------------------------------- the loop


def test_fit_decreases_loss_and_learns() -> None:
    x, y = _blobs(256)
    xv, yv = _blobs(128, seed=1)
    net = _mlp()
    before = evaluate_accuracy(net, xv, yv)
    history = fit(net, x, y, epochs=8, batch_size=32, lr=1e-2, x_val=xv, y_val=yv)
    losses = [r.loss for r in history.epochs]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0]
    assert history.val_accuracy is not None and history.val_accuracy >= 0.97
    assert history.val_accuracy > before
    assert history.train_accuracy is not None and history.train_accuracy >= 0.95
    assert history.val_accuracy == evaluate_accuracy(net, xv, yv)
    assert history.steps == 8 * 8
    assert all(r.seconds > 0 for r in history.epochs) and history.seconds >= sum(r.seconds for r in history.epochs)
    assert history.seconds_per_epoch == pytest.approx(sum(r.seconds for r in history.epochs) / 8)


def test_fit_is_deterministic_and_seed_matters() -> None:
    x, y = _blobs(200)
    base = _mlp(dropout=0.0)
    runs = []
    for seed in (3, 3, 4):
        net = copy.deepcopy(base)
        h = fit(net, x, y, epochs=3, batch_size=16, lr=1e-2, optimizer="sgd", schedule="cosine", seed=seed)
        runs.append((net.state_dict(), [(r.loss, r.train_accuracy, r.lr) for r in h.epochs]))
    (w1, h1), (w2, h2), (w3, h3) = runs
    assert h1 == h2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert h1 != h3
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_step_generator_is_seeded() -> None:
    draws: list[list[Tensor]] = []

    def noisy_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        noise = torch.rand(x.shape, generator=ctx.generator, device=ctx.device)
        draws[-1].append(noise)
        return standard_step(model, (x + 0.01 * noise).clamp(0, 1), y, ctx)

    x, y = _blobs(64)
    for _ in range(2):
        draws.append([])
        fit(_mlp(), x, y, epochs=1, batch_size=32, step=noisy_step, seed=9)
    assert len(draws[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1], strict=True))
    assert not torch.equal(draws[0][0], draws[0][1])


def test_callbacks_fire_in_order_with_counts() -> None:
    x, y = _blobs(100)
    rec = Recorder()
    fit(_mlp(), x, y, epochs=3, batch_size=32, callbacks=[rec])
    names = [e[0] for e in rec.events]
    steps_per_epoch = math.ceil(100 / 32)
    expected = ["fit_start"]
    for _ in range(3):
        expected += ["epoch_start"] + ["batch_end"] * steps_per_epoch + ["epoch_end"]
    expected += ["fit_end"]
    assert names == expected
    batch_steps = [s for name, _, s in rec.events if name == "batch_end"]
    assert batch_steps == list(range(1, 3 * steps_per_epoch + 1))
    assert [e for name, e, _ in rec.events if name == "epoch_end"] == [0, 1, 2]


def test_callback_can_stop_training() -> None:
    class StopAfterOne(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            state.stop_training = True

    rec = Recorder()
    x, y = _blobs(64)
    history = fit(_mlp(), x, y, epochs=5, batch_size=32, callbacks=[StopAfterOne(), rec])
    assert len(history.epochs) == 1
    assert [e[0] for e in rec.events][-2:] == ["epoch_end", "fit_end"]


def test_custom_step_function_is_used() -> None:
    contexts: list[StepContext] = []

    def recording_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        contexts.append(ctx)
        assert model.training
        out = standard_step(model, x, y, ctx)
        return StepOutput(loss=out.loss, logits=None, metrics={"batch_size": float(len(x))})

    x, y = _blobs(70)
    history = fit(_mlp(), x, y, epochs=2, batch_size=32, step=recording_step)
    # 70 = 32 + 32 + 6 -> 3 batches per epoch
    assert [(c.epoch, c.batch, c.step) for c in contexts] == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5)
    ]
    assert all(c.steps_per_epoch == 3 and c.epochs == 2 for c in contexts)
    # Metrics are batch-size-weighted epoch means: (32*32 + 32*32 + 6*6) / 70.
    assert history.epochs[0].metrics["batch_size"] == pytest.approx((32 * 32 * 2 + 6 * 6) / 70)
    # No logits returned -> no train accuracy.
    assert history.train_accuracy is None


def test_fit_uses_train_mode_and_restores_mode() -> None:
    x, y = _blobs(64)
    probe = ModeProbe()
    probe.eval()
    fit(probe, x, y, epochs=1, batch_size=32, x_val=x, y_val=y)
    assert probe.modes[:2] == [True, True]  # the two training batches
    assert probe.modes[2:] == [False]  # validation in eval mode (one batch of 64)
    assert probe.training is False


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_accuracy_restores_mode_and_counts(start_training: bool) -> None:
    probe = ModeProbe()
    probe.train(start_training)
    with torch.no_grad():
        probe.lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        probe.lin.bias.zero_()
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0.2, 0.9, 0, 0], [0.9, 0, 0, 0]])
    y = torch.tensor([0, 1, 1, 1, 0])  # third one is wrong
    acc = evaluate_accuracy(probe, x.reshape(5, 1, 2, 2), y, batch_size=2)
    assert acc == pytest.approx(4 / 5)
    assert probe.modes == [False, False, False]
    assert probe.training is start_training
    assert torch.is_grad_enabled()


def test_schedules_step_per_batch() -> None:
    x, y = _blobs(64)
    lrs = {}
    for schedule in (None, "cosine", "onecycle"):
        rec = Recorder()
        h = fit(_mlp(), x, y, epochs=4, batch_size=16, lr=0.1, optimizer="sgd", schedule=schedule,
                callbacks=[rec])
        lrs[schedule] = rec.lrs
        assert h.epochs[-1].lr == pytest.approx(rec.lrs[-1])
    assert lrs[None] == [0.1] * 16
    cos = lrs["cosine"]
    assert cos[0] == 0.1 and all(a > b for a, b in itertools.pairwise(cos))
    assert cos[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 15 / 16)))
    one = lrs["onecycle"]
    peak = one.index(max(one))
    assert 0 < peak < 15 and max(one) == pytest.approx(0.1, rel=0.05)
    assert one[0] == pytest.approx(0.1 / 25) and one[-1] < 1e-5


def test_make_scheduler_cosine_matches_formula() -> None:
    opt = make_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=1.0, momentum=0.0)
    sched = make_scheduler(opt, "cosine", total_steps=10)
    assert sched is not None
    for t in range(1, 11):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 10)))


@pytest.mark.parametrize("name,kwargs", [
    ("adam", {}), ("adamw", {"weight_decay": 1e-2}), ("sgd", {"momentum": 0.9, "nesterov": True}),
])
def test_optimizers_build_and_train(name: str, kwargs: dict[str, object]) -> None:
    x, y = _blobs(128)
    opt = make_optimizer(nn.Linear(1, 1).parameters(), name, lr=0.1, **kwargs)  # type: ignore[arg-type]
    assert type(opt).__name__.lower() == name
    h = fit(_mlp(), x, y, epochs=4, batch_size=32, lr=0.05 if name == "sgd" else 1e-2, optimizer=name,
            **kwargs)  # type: ignore[arg-type]
    assert h.epochs[-1].loss < h.epochs[0].loss


def test_grad_clip_bounds_the_update() -> None:
    x, y = _blobs(64)
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    fit(net, x, y, epochs=1, batch_size=64, lr=1.0, optimizer="sgd", momentum=0.0, grad_clip=1e-3)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before, strict=True)]).norm()
    assert 0 < float(moved) <= 1e-3 + 1e-7


def test_ready_optimizer_is_used() -> None:
    x, y = _blobs(64)
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    before = [p.detach().clone() for p in net.parameters()]
    fit(net, x, y, epochs=1, batch_size=32, optimizer=opt, lr=1.0)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))


def test_last_single_example_batch_is_merged() -> None:
    assert _batch_slices(129, 128) == [(0, 129)]
    assert _batch_slices(130, 128) == [(0, 128), (128, 130)]
    assert _batch_slices(1, 128) == [(0, 1)]
    assert _batch_slices(256, 128) == [(0, 128), (128, 256)]
    # Batch norm trains on 129 examples with batch size 128 (a batch of one would fail).
    x, y = _blobs(129)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    assert fit(net, x, y, epochs=1, batch_size=128).steps == 1


def test_fit_on_classifier_validates_bounds_once() -> None:
    x, y = _blobs(64)
    clf = Classifier(_mlp(), mean=[0.5], std=[0.25])
    h = fit(clf, x, y, epochs=2, batch_size=32, lr=1e-2, x_val=x, y_val=y)
    assert h.val_accuracy is not None and h.val_accuracy > 0.9
    assert clf.check_inputs  # restored after fit
    with pytest.raises(ValueError, match="bounds"):
        fit(clf, x + 2.0, y, epochs=1)


def test_diverging_loss_raises() -> None:
    x, y = _blobs(64)

    def nan_step(model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        out = standard_step(model, x, y, ctx)
        return StepOutput(loss=out.loss * float("nan"), logits=out.logits)

    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(_mlp(), x, y, epochs=1, step=nan_step)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1, got 0"),
    ({"epochs": 1.5}, TypeError, "epochs must be an integer, got float 1.5"),
    ({"epochs": True}, TypeError, "epochs must be an integer, got bool True"),
    ({"epochs": 1, "batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    ({"epochs": 1, "batch_size": "8"}, TypeError, "batch_size must be an integer, got str '8'"),
    ({"epochs": 1, "seed": 0.5}, TypeError, "seed must be an integer, got float 0.5"),
    ({"epochs": 1, "seed": 2**64}, ValueError, "seed must be an integer >= "),
    ({"epochs": 1, "optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"epochs": 1, "schedule": "linear"}, ValueError, "schedule"),
    ({"epochs": 1, "lr": -1.0}, ValueError, "lr must be > 0, got -1"),
    ({"epochs": 1, "lr": float("nan")}, ValueError, "lr must be finite"),
    ({"epochs": 1, "lr": "0.1"}, TypeError, "lr must be a number, got str '0.1'"),
    ({"epochs": 1, "weight_decay": -1.0}, ValueError, "weight_decay must be >= 0, got -1"),
    ({"epochs": 1, "optimizer": "sgd", "momentum": 1.0}, ValueError, "momentum must be < 1, got 1"),
    ({"epochs": 1, "grad_clip": 0.0}, ValueError, "grad_clip must be > 0, got 0"),
    ({"epochs": 1, "grad_clip": "1"}, TypeError, "grad_clip must be a number"),
    ({"epochs": 1, "x_val": torch.rand(4, 1, 2, 2)}, ValueError, "x_val and y_val"),
    ({"epochs": 1, "optimizer": "sgd", "momentum": 0.0, "nesterov": True}, ValueError, "nesterov"),
    ({"epochs": 1, "callbacks": [object()]}, TypeError, "Callback"),
])
def test_fit_rejects_bad_arguments(kwargs: dict[str, object], err: type[Exception], match: str) -> None:
    x, y = _blobs(32)
    with pytest.raises(err, match=match):
        fit(_mlp(), x, y, **kwargs)  # type: ignore[arg-type]


def test_fit_rejects_bad_data() -> None:
    x, y = _blobs(32)
    with pytest.raises(ValueError, match="first dimension"):
        fit(_mlp(), x, y[:10], epochs=1)
    with pytest.raises(ValueError, match="integer"):
        fit(_mlp(), x, y.float(), epochs=1)
    with pytest.raises(TypeError, match="floating point"):
        fit(_mlp(), (x * 255).to(torch.uint8), y, epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        fit(_mlp(), x, y - 1, epochs=1)
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(_mlp(), x[:0], y[:0])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate_accuracy(_mlp(), x, y, batch_size=0)
    with pytest.raises(TypeError, match=r"batch_size must be an integer, got float 8\.0"):
        evaluate_accuracy(_mlp(), x, y, batch_size=8.0)  # type: ignore[arg-type]


def test_make_scheduler_rejects_bad_step_counts() -> None:
    opt = make_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=1.0)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1, got 0"):
        make_scheduler(opt, "cosine", total_steps=0)
    with pytest.raises(TypeError, match=r"total_steps must be an integer, got float 10\.0"):
        make_scheduler(opt, "cosine", total_steps=10.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- recipes


def test_get_recipe_overrides_and_rejects_unknown_fields() -> None:
    base = get_recipe("cnn-small", "mnist")
    assert get_recipe("cnn-small", "mnist", epochs=1, lr=None).epochs == 1
    assert get_recipe("cnn-small", "mnist", lr=None).lr == base.lr
    assert get_recipe("no-such-model").epochs >= 1
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("cnn-small", epoch=3)
    kwargs = base.fit_kwargs()
    assert set(kwargs) <= set(fit.__code__.co_varnames)


def test_prepare_model_places_rbf_centres_on_data() -> None:
    from advlab.models import create_model
    from advlab.train import prepare_model

    x = torch.rand(200, 1, 8, 8)
    model = create_model("rbf", in_shape=(1, 8, 8), num_classes=10, num_centers=8)
    centres_before = [p.detach().clone() for p in model.parameters()]
    assert prepare_model(model, x, generator=torch.Generator().manual_seed(0))
    assert not all(torch.equal(a, b) for a, b in zip(centres_before, model.parameters(), strict=True))
    assert not prepare_model(create_model("softmax", in_shape=(1, 8, 8), num_classes=10), x)


def test_every_zoo_model_has_a_recipe() -> None:
    from advlab.models import MODELS, list_models
    from advlab.train import RECIPES

    zoo = {name for name in list_models() if getattr(MODELS.get(name), "__module__", "") == "advlab.models.zoo"}
    assert len(zoo) >= 7
    assert zoo <= set(RECIPES)


# ---------------------------------------------------------------- train_model, save_run


def test_train_model_is_reproducible_and_restores_the_global_rng() -> None:
    """Same seed, same weights (cnn-small has dropout, which draws from the global RNG); the caller's RNG is
    left as it was."""
    recipe = Recipe(epochs=1, lr=3e-3, batch_size=32)
    state = torch.random.get_rng_state()
    runs = [train_model("cnn-small", "digits", recipe, seed=s, n_train=96) for s in (5, 5, 6)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model_hash(runs[0].model) == model_hash(runs[1].model) != model_hash(runs[2].model)
    assert runs[0].summary == {**runs[1].summary, "seconds": runs[0].summary["seconds"],
                               "seconds_per_epoch": runs[0].summary["seconds_per_epoch"]}
    s = runs[0].summary
    assert s["n_train"] == 96 and s["n_test"] == 360 and s["data"] == "digits" and s["seed"] == 5
    assert s["recipe"] == recipe.to_dict() and set(s["versions"]) >= {"advlab", "torch"}
    assert s["test_accuracy"] == runs[0].history.test_accuracy
    assert s["test_accuracy"] == evaluate_accuracy(runs[0].model, *load_dataset("digits", "test"))
    assert not runs[0].model.training


def test_train_model_on_tensors_matches_the_named_dataset(tmp_path: Path) -> None:
    from advlab.models import load_checkpoint_metadata

    recipe = Recipe(epochs=1, lr=1e-2)
    by_name = train_model("softmax", "digits", recipe, seed=2)
    tensors = (*load_dataset("digits", "train"), *load_dataset("digits", "test"))
    by_tensors = train_model("softmax", tensors, recipe, dataset="digits", seed=2)
    assert model_hash(by_name.model) == model_hash(by_tensors.model)
    assert by_tensors.summary["test_accuracy"] == by_name.summary["test_accuracy"]
    # Without a dataset name or a test split: raw inputs, classes from the labels, no test accuracy.
    bare = train_model("softmax", tensors[:2], recipe, seed=2, threads=1)
    assert bare.summary["data"] is None and bare.summary["test_accuracy"] is None and bare.summary["n_test"] == 0
    assert bare.model.model_config["num_classes"] == 10
    path = save_run(by_name, tmp_path / "ck")
    meta = load_checkpoint_metadata(path)
    assert meta["metrics"]["test_accuracy"] == by_name.summary["test_accuracy"]
    assert meta["extra"]["recipe"] == recipe.to_dict() and meta["seed"] == 2 and meta["dataset"] == "digits"
    assert len(meta["extra"]["history"]["epochs"]) == 1


def test_train_model_threads_are_restored() -> None:
    torch.set_num_threads(1)
    run = train_model("softmax", "digits", Recipe(epochs=1, lr=1e-2), n_train=50, threads=2)
    assert run.summary["torch_threads"] == 2
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("args,kwargs,match", [
    (("no-such-net", "digits"), {}, "unknown model 'no-such-net'"),
    (("softmax", "no-such-data"), {}, "unknown dataset 'no-such-data'"),
    (("softmax", "digits"), {"dataset": "mnist"}, "contradicts"),
    (("softmax", (torch.rand(4, 1, 2, 2),)), {}, "tuple of tensors"),
    (("softmax", (torch.rand(4, 1, 2, 2), torch.zeros(3, dtype=torch.long))), {}, "same N"),
    (("softmax", "digits"), {"n_train": 0}, "n_train must be an integer >= 1, got 0"),
    (("softmax", "digits"), {"threads": 0}, "threads must be an integer >= 1, got 0"),
    (("softmax", "digits"), {"recipe": Recipe(epochs=1, lr=-1.0)}, "lr"),
])
def test_train_model_rejects_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_model(*args, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": 1.5}, "seed must be an integer, got float 1.5"),
    ({"seed": "0"}, "seed must be an integer, got str '0'"),
    ({"n_train": 10.0}, "n_train must be an integer, got float 10.0"),
    ({"threads": True}, "threads must be an integer, got bool True"),
    ({"recipe": {"epochs": 1}}, "recipe must be an advlab.train.Recipe or None, got dict"),
])
def test_train_model_rejects_settings_of_the_wrong_type(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        train_model("softmax", "digits", **kwargs)


# ---------------------------------------------------------------- CLI


def _invoke(args: list[str]) -> Any:
    from click.testing import CliRunner

    from advlab.cli.main import cli

    return CliRunner().invoke(cli, args)


def test_cli_train_writes_checkpoint_and_reproducible_summary(tmp_path: Path) -> None:
    from advlab.models import load_checkpoint

    out = tmp_path / "ck"
    args = ["train", "--model", "softmax", "--data", "digits", "--epochs", "2", "--n-train", "400",
            "--no-progress", "--device", "cpu", "--seed", "3"]
    result = _invoke([*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    assert summary["model"] == "softmax" and summary["data"] == "digits" and summary["epochs"] == 2
    assert summary["n_train"] == 400 and summary["seed"] == 3 and summary["device"] == "cpu"
    assert Path(summary["checkpoint"]) == out
    for key in ("train_accuracy", "test_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["test_accuracy"] > 0.5  # softmax regression learns digits quickly
    assert summary["seconds"] > 0 and summary["seconds_per_epoch"] > 0
    # The checkpoint reproduces the reported test accuracy and records it.
    model = load_checkpoint(out)
    x_test, y_test = load_dataset("digits", "test")
    assert evaluate_accuracy(model, x_test, y_test) == summary["test_accuracy"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["test_accuracy"] == summary["test_accuracy"]
    assert meta["seed"] == 3 and meta["dataset"] == "digits"
    # Same seed -> same numbers.
    again = json.loads(_invoke([*args, "--out", str(tmp_path / "ck2")]).stdout)
    assert again["test_accuracy"] == summary["test_accuracy"] and again["loss"] == summary["loss"]


@pytest.mark.parametrize("args,message", [
    (["--model", "no-such-net"], "unknown model 'no-such-net'"),
    (["--data", "no-such-data"], "unknown dataset 'no-such-data'"),
    (["--data", "mnist", "--data-root", "/nonexistent/advlab-data"], "advlab data fetch mnist"),
])
def test_cli_train_errors_are_clean(tmp_path: Path, args: list[str], message: str) -> None:
    result = _invoke(["train", *args, "--out", str(tmp_path / "ck"), "--no-progress", "--device", "cpu"])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "ck").exists()


def test_cnn_small_on_digits_reaches_97_percent_quickly(tmp_path: Path) -> None:
    """The digits recipe of cnn-small (the demo's standard model): >= 97% test accuracy in well under 30 s."""
    result = _invoke(["train", "--model", "cnn-small", "--data", "digits", "--out", str(tmp_path / "run"),
                      "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "cnn-small" and summary["data"] == "digits"
    assert summary["test_accuracy"] >= 0.97
    assert summary["seconds"] < 30
    assert (tmp_path / "run" / "model.json").is_file()


# A value for every Recipe field, each different from the softmax recipe's; a new field must be added here.
_RECIPE_VALUES = {"epochs": 1, "lr": 0.05, "optimizer": "sgd", "batch_size": 32, "schedule": "onecycle",
                  "weight_decay": 1e-4, "momentum": 0.5, "nesterov": True, "grad_clip": 2.0}


def _option_args(values: dict[str, Any]) -> list[str]:
    args = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, "none" if value is None else str(value)]
    return args


def test_cli_train_has_an_option_for_every_recipe_field() -> None:
    from advlab.cli.train_cmd import train_command

    options = {p.name: p for p in train_command.params if isinstance(p, click.Option)}
    assert set(_RECIPE_VALUES) == {f.name for f in fields(Recipe)}
    for f in fields(Recipe):
        assert f.name in options, f"advlab train has no option for Recipe.{f.name}"
        assert "--" + f.name.replace("_", "-") in options[f.name].opts
        assert options[f.name].default is None  # unset means "the recipe's value"
        assert options[f.name].help


def test_cli_train_recipe_options_take_effect(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from advlab.cli.train_cmd import train_command

    base = ["--model", "softmax", "--data", "digits", "--n-train", "64", "--no-progress", "--device", "cpu"]
    assert all(get_recipe("softmax", "digits").to_dict()[k] != v for k, v in _RECIPE_VALUES.items())
    result = CliRunner().invoke(train_command, [*base, *_option_args(_RECIPE_VALUES), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recipe"] == _RECIPE_VALUES
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["extra"]["recipe"] == _RECIPE_VALUES
    # Optional fields take "none"; unset ones keep the recipe's value.
    result = CliRunner().invoke(train_command, [*base, "--epochs", "1", "--schedule", "none", "--grad-clip", "none",
                                                "--no-nesterov", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    expected = {**get_recipe("softmax", "digits").to_dict(), "epochs": 1, "schedule": None, "grad_clip": None}
    assert json.loads(result.stdout)["recipe"] == expected
    bad = CliRunner().invoke(train_command, [*base, "--grad-clip", "lots", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--grad-clip" in bad.output
