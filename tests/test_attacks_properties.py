"""Invariants every registered attack must satisfy, checked with hypothesis on a tiny fixed-weight model.

The tests iterate over the attack registry, so an attack registered later is covered by default: results
lie inside the ε-ball and the bounds, ε = 0 is the identity, a seed reproduces the result bit for bit, the
model (mode, parameter gradients, BatchNorm statistics) is left as it was, ``success`` matches a fresh
re-check and the cost counters are sane.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.attacks import AttackResult, attack_spec, get_attack, list_attacks
from advlab.models.classifier import Classifier
from advlab.threat import is_adversarial, lp_norm, random_targets

NUM_CLASSES = 4
SHAPE = (1, 6, 6)
BOUNDS = ((0.0, 1.0), (-1.0, 2.0))

# Keep the suite fast: few iterations where an attack has them. An attack missing from this table gets
# ``steps=5`` if its signature has ``steps`` and its defaults otherwise.
FAST_KWARGS: dict[str, dict[str, Any]] = {
    "bim": {"steps": 5},
    "illc": {"steps": 5},
    "pgd": {"steps": 5, "restarts": 2},
    "mifgsm": {"steps": 5},
}


def fast_kwargs(name: str) -> dict[str, Any]:
    if name in FAST_KWARGS:
        return dict(FAST_KWARGS[name])
    params = inspect.signature(get_attack(name)).parameters
    return {"steps": 5} if "steps" in params else {}


def accepts(name: str, arg: str) -> bool:
    return arg in inspect.signature(get_attack(name)).parameters


def tiny_model(bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Classifier:
    """A small CNN with BatchNorm and dropout (so train and eval mode differ), weights from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, NUM_CLASSES)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
        bn = net[1]
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
    return Classifier(net, bounds=bounds, mean=[0.5], std=[0.3])


def random_inputs(n: int, bounds: tuple[float, float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs within ``bounds``, some exactly at a bound (like saturated pixels), and random labels."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    x = (torch.rand(n, *SHAPE, generator=gen) * 1.4 - 0.2).clamp(0, 1) * (hi - lo) + lo
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return x, y


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(x)
    model.train(was_training)
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=list_attacks())
def attack_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invariants(attack_name: str, data: st.DataObject) -> None:
    spec = attack_spec(attack_name)
    fn = get_attack(attack_name)
    norm = data.draw(st.sampled_from(spec.norms), label="norm")
    bounds = data.draw(st.sampled_from(BOUNDS), label="bounds")
    width = bounds[1] - bounds[0]
    scale = {"linf": 0.5, "l2": 3.0, "l1": 15.0, "l0": 40.0}[norm] * (1.0 if norm == "l0" else width)
    budgets = data.draw(st.lists(st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0]), min_size=1, max_size=3), label="eps")
    budgets = [b * scale for b in budgets]
    n = data.draw(st.integers(1, 6), label="n")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    targeted = spec.targeted and data.draw(st.booleans(), label="targeted")

    model = tiny_model(bounds)
    x, labels = random_inputs(n, bounds, seed)
    x_before = x.clone()
    kwargs = fast_kwargs(attack_name)
    kwargs.update(eps=budgets, norm=norm)
    y = labels
    if targeted:
        y = random_targets(labels, NUM_CLASSES, torch.Generator().manual_seed(seed + 1))
        kwargs["targeted"] = True
        if accepts(attack_name, "true_labels"):
            kwargs["true_labels"] = labels

    # Known parameter gradients (some None), train mode and BatchNorm statistics must all survive.
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 0.5 + i) if i % 2 == 0 else None
    model.train()
    state = snapshot(model)

    result: AttackResult = fn(model, x, y, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert model.training, "the model's train/eval mode must be restored"
    assert all(p.requires_grad for p in params)
    for i, p in enumerate(params):
        if i % 2 == 0:
            assert p.grad is not None and torch.equal(p.grad, torch.full_like(p, 0.5 + i))
        else:
            assert p.grad is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed: the attack must run the model in eval mode"
    assert torch.equal(x, x_before), "the attack must not modify its inputs"

    b = len(budgets)
    assert result.x_adv.shape == (b, n, *SHAPE) and result.x_adv.dtype == x.dtype
    assert result.eps == tuple(budgets) and result.norm == norm
    # An attack may choose its own targets (e.g. the least-likely class): then ``labels`` holds them.
    assert result.targeted or not targeted
    if targeted or not result.targeted:
        assert torch.equal(result.labels, y)
    else:
        assert not bool((result.labels == labels).any()), "self-chosen targets must differ from the true labels"
    assert result.success.shape == (b, n) and result.success.dtype == torch.bool
    for i, e in enumerate(budgets):
        xa = result.x_adv[i]
        dist = lp_norm(xa - x, norm)
        assert bool((dist <= e * (1 + 1e-5) + 1e-6).all()), f"outside the {norm} ball of radius {e}: {dist}"
        torch.testing.assert_close(result.distances[i], dist)
        assert float(xa.min()) >= bounds[0] and float(xa.max()) <= bounds[1]
        if e == 0.0:
            assert torch.equal(xa, x)
        fresh = is_adversarial(eval_logits(model, xa), result.labels, result.targeted)
        assert torch.equal(result.success[i], fresh)
    clean_pred = eval_logits(model, x).argmax(dim=1)
    assert torch.equal(result.clean_correct, clean_pred == labels)
    # at least the clean pass and one re-check per budget; white-box: every forward pass is a query
    assert result.n_forward >= n * (1 + b) and result.n_queries == result.n_forward
    assert result.seconds > 0

    again = fn(model, x, y, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert torch.equal(again.x_adv, result.x_adv), "the same seed must give the same x_adv"


def test_eps_zero_is_identity(attack_name: str) -> None:
    model = tiny_model()
    x, y = random_inputs(5, (0.0, 1.0), 7)
    for norm in attack_spec(attack_name).norms:
        result = get_attack(attack_name)(model, x, y, eps=0.0, norm=norm, **fast_kwargs(attack_name))
        assert torch.equal(result.x_adv[0], x)
        assert torch.equal(result.distances, torch.zeros(1, 5))
        assert torch.equal(result.success[0], is_adversarial(eval_logits(model, x), result.labels, result.targeted))


def test_works_on_a_plain_module(attack_name: str) -> None:
    """Any ``nn.Module`` returning logits is a model (bounds default to [0, 1]); eval mode is still used."""
    net = tiny_model().net
    net.train()
    x, y = random_inputs(4, (0.0, 1.0), 3)
    norm = attack_spec(attack_name).norms[0]
    result = get_attack(attack_name)(net, x, y, eps=[0.1], norm=norm, generator=torch.Generator().manual_seed(0),
                                     **fast_kwargs(attack_name))
    assert net.training
    assert bool((lp_norm(result.x_adv[0] - x, norm) <= 0.1 * (1 + 1e-5) + 1e-6).all())
    fresh = is_adversarial(eval_logits(net, result.x_adv[0]), result.labels, result.targeted)
    assert torch.equal(result.success[0], fresh)


def test_batch_size_gives_the_same_result(attack_name: str) -> None:
    """Chunking is invisible for deterministic attacks (random ones draw per chunk, so only the ball holds)."""
    model = tiny_model()
    x, y = random_inputs(6, (0.0, 1.0), 11)
    norm = attack_spec(attack_name).norms[0]
    kw = fast_kwargs(attack_name)
    whole = get_attack(attack_name)(model, x, y, eps=0.2, norm=norm, generator=torch.Generator().manual_seed(0), **kw)
    chunked = get_attack(attack_name)(model, x, y, eps=0.2, norm=norm, generator=torch.Generator().manual_seed(0),
                                      batch_size=4, **kw)
    assert bool((chunked.distances <= 0.2 * (1 + 1e-5) + 1e-6).all())
    assert torch.equal(chunked.clean_correct, whole.clean_correct)
    if not _uses_randomness(attack_name):
        torch.testing.assert_close(chunked.x_adv, whole.x_adv, rtol=1e-5, atol=1e-5)
        assert torch.equal(chunked.success, whole.success)


def _uses_randomness(name: str) -> bool:
    """Whether the attack's result depends on the generator (random starts or noise)."""
    model = tiny_model()
    x, y = random_inputs(3, (0.0, 1.0), 5)
    norm = attack_spec(name).norms[0]
    kw = fast_kwargs(name)
    a = get_attack(name)(model, x, y, eps=0.3, norm=norm, generator=torch.Generator().manual_seed(1), **kw)
    b = get_attack(name)(model, x, y, eps=0.3, norm=norm, generator=torch.Generator().manual_seed(2), **kw)
    return not torch.equal(a.x_adv, b.x_adv)
