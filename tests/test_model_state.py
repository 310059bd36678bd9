"""An attack leaves the model exactly as it found it: the train/eval mode of every submodule, each
parameter's ``.grad`` and ``requires_grad``, and its buffers (BatchNorm running statistics), also when the
attack fails part-way. Every registered attack is checked (the tests iterate over the registry)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from advlab.attacks import attack_spec, list_attacks
from advlab.models.classifier import Classifier
from conftest import tiny_cnn

NUM_CLASSES = 4
SHAPE = (1, 6, 6)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::advlab.attacks.AlreadyAtTargetWarning"),
]


def wrapped_model(seed: int = 0) -> Classifier:
    """The shared tiny CNN (conftest.tiny_cnn): BatchNorm and dropout, so train and eval mode differ."""
    model = tiny_cnn(seed=seed, num_classes=NUM_CLASSES)
    assert isinstance(model, Classifier)
    return model


def inputs(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=gen), torch.randint(0, NUM_CLASSES, (n,), generator=gen)


def run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    spec = attack_spec(name)
    norm = spec.norms[0]
    kwargs: dict[str, Any] = {"eps": [4.0] if norm == "l0" else [0.1, 0.3], "norm": norm}
    if "steps" in inspect.signature(spec.fn).parameters:
        kwargs["steps"] = 3
    return spec.fn(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(params=list_attacks())
def name(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    if attack_spec(value).models:
        pytest.skip(f"{value} attacks {'/'.join(attack_spec(value).models)} models only (buffers, no modes or "
                    f"parameters), not this network")
    return value


@pytest.mark.parametrize("outer_training", [False, True])
def test_the_mode_of_every_submodule_is_restored(name: str, outer_training: bool) -> None:
    """Outer wrapper in eval and inner net in train mode, and the other way round; the attack itself runs
    every submodule in eval mode."""
    model = wrapped_model()
    model.train(outer_training)
    model.net.train(not outer_training)
    model.net[4].train(outer_training)  # the dropout differs from its parent too
    before = modes(model)
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _args: seen.append(mod.training)) for m in model.modules()]
    try:
        run(name, model, *inputs())
    finally:
        for h in hooks:
            h.remove()
    assert modes(model) == before
    assert seen and not any(seen), "every submodule must be in eval mode during the attack"


def test_parameter_grads_and_requires_grad_are_untouched(name: str) -> None:
    model = wrapped_model()
    params = list(model.parameters())
    grads: list[torch.Tensor | None] = []
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 != 1)  # some frozen by the user
        p.grad = torch.full_like(p, 0.25 + i) if i % 2 == 0 else None
        grads.append(p.grad)
    x, y = inputs()
    x.requires_grad_(True)
    run(name, model, x, y)
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        assert p.requires_grad == (i % 3 != 1)
        assert p.grad is g, "the attack must not replace or accumulate into parameter .grad"
        if g is not None:
            assert torch.equal(g, torch.full_like(p, 0.25 + i))
    assert x.grad is None and x.requires_grad


def test_batchnorm_statistics_do_not_change_in_a_model_left_in_train_mode(name: str) -> None:
    model = wrapped_model()
    model.train()
    state = snapshot(model)
    run(name, model, *inputs())
    after = model.state_dict()
    for key, value in state.items():
        assert torch.equal(after[key], value), f"{key} changed: the attack must run the model in eval mode"
    bn = model.net[1]
    assert isinstance(bn, nn.BatchNorm2d) and int(bn.num_batches_tracked) == 0


class FailsLater(nn.Module):
    """Returns logits for ``calls`` evaluations, then raises (an attack failing part-way)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.inner = wrapped_model()
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("the model broke down")
        out: torch.Tensor = self.inner(x)
        return out


@pytest.mark.parametrize("calls", [0, 1])
def test_the_model_is_restored_when_the_attack_fails(name: str, calls: int) -> None:
    model = FailsLater(calls)
    model.train()
    model.inner.net.eval()
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before, state = modes(model), snapshot(model)
    with pytest.raises(RuntimeError, match="broke down"):
        run(name, model, *inputs())
    assert modes(model) == before
    assert not frozen.requires_grad and all(p.requires_grad for p in list(model.parameters())[1:])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_classifier_input_checks_are_restored(name: str) -> None:
    """Attacks switch off a Classifier's per-call input checks inside their loops, and back on after."""
    model = wrapped_model()
    run(name, model, *inputs())
    assert model.check_inputs
    with pytest.raises(ValueError, match="bounds"):
        model(torch.full((1, *SHAPE), 2.0))
