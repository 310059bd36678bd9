"""Registry-driven tests: every registered attack states its hyper-parameters once (its config), and every
registered attack is strong on a CNN trained on the bundled digits (no data files needed).

An attack appears here by being registered; nothing is listed by hand."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from torch import nn

from advlab.attacks import CALL_ARGS, attack_spec, list_attacks, pgd
from advlab.data import load_dataset
from advlab.threat import LpBall, random_targets

pytestmark = pytest.mark.usefixtures("one_thread")

# One budget per norm, large enough that every attack breaks most of the digits CNN's correct answers and
# small enough that random noise of the same size breaks (almost) none.
EPS = {"linf": 0.25, "l2": 1.5, "l1": 8.0, "l0": 8}
# Lower bounds of the success rate among clean-correct examples (targeted: random targets, any attack).
UNTARGETED_FLOOR, TARGETED_FLOOR = 0.35, 0.12


@pytest.fixture(scope="module")
def digits_points() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "test")
    return x[:100], y[:100]


@pytest.mark.parametrize("name", list_attacks())
def test_function_defaults_equal_the_config(name: str) -> None:
    """The attack function's keyword defaults are its registered config's defaults, field for field."""
    spec = attack_spec(name)
    params = inspect.signature(spec.fn).parameters
    keyword = {k: p for k, p in params.items() if p.kind == p.KEYWORD_ONLY}
    fields = {f.name: f.default for f in dataclasses.fields(spec.config)}
    assert set(keyword) - set(CALL_ARGS) == set(fields), f"{name}: function and config disagree on the fields"
    for field, default in fields.items():
        assert keyword[field].default == default, f"{name}.{field}: {keyword[field].default!r} != {default!r}"
    assert keyword["norm"].default == spec.default_norm
    assert list(params)[:3] == ["model", "x", "y"]
    assert {"eps", "targeted", "generator", "batch_size"} <= set(keyword)


@pytest.mark.parametrize("name", list_attacks())
def test_config_reaches_the_result(name: str, digits_cnn: nn.Module,
                                   digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    """What the function was given is what ran: the result's config holds every field of the config."""
    spec = attack_spec(name)
    x, y = digits_points
    r = spec.fn(digits_cnn, x[:4], y[:4], eps=EPS[spec.default_norm])
    assert {k: r.config[k] for k in spec.defaults()} == spec.defaults()
    assert r.config["norm"] == spec.default_norm == r.norm


def _success_among_correct(success: torch.Tensor, correct: torch.Tensor) -> float:
    return float((success & correct).sum()) / max(int(correct.sum()), 1)


@pytest.mark.parametrize("name", list_attacks())
def test_untargeted_strength_on_digits(name: str, digits_cnn: nn.Module,
                                       digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec = attack_spec(name)
    x, y = digits_points
    eps = EPS[spec.default_norm]
    r = spec.fn(digits_cnn, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert float(r.clean_correct.float().mean()) >= 0.9  # the model is good, so success means something
    rate = _success_among_correct(r.success[0], r.clean_correct)
    floor = TARGETED_FLOOR if r.targeted else UNTARGETED_FLOOR  # illc aims at its own (least-likely) targets
    assert rate >= floor, f"{name} broke only {rate:.1%} of the correct answers at eps={eps}"
    assert bool((r.distances[0] <= eps * (1 + 1e-5) + 1e-6).all())
    if spec.default_norm != "l0":  # the attack beats random noise of the same budget by far
        noise = LpBall(spec.default_norm, eps).random_init(x, torch.Generator().manual_seed(0))
        with torch.no_grad():
            noisy = digits_cnn((x + noise).clamp(0, 1)).argmax(dim=1) != y
        assert rate >= 0.1 + 3 * _success_among_correct(noisy, r.clean_correct)


@pytest.mark.parametrize("name", [n for n in list_attacks() if attack_spec(n).targeted])
def test_targeted_strength_on_digits(name: str, digits_cnn: nn.Module,
                                     digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec = attack_spec(name)
    x, y = digits_points
    targets = random_targets(y, 10, torch.Generator().manual_seed(1))
    r = spec.fn(digits_cnn, x, targets, eps=EPS[spec.default_norm], targeted=True, true_labels=y,
                generator=torch.Generator().manual_seed(0))
    assert float(r.success_rate[0]) >= TARGETED_FLOOR, f"{name} hit only {float(r.success_rate[0]):.1%} of targets"
    with torch.no_grad():
        hit = digits_cnn(r.x_adv[0]).argmax(dim=1) == targets
    assert torch.equal(hit, r.success[0])  # success means the target class, not any wrong class


def test_pgd_restarts_keep_the_best_restart_per_example(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Restart 0 is the single run; the others break more examples, and each example keeps a success."""
    x, y = load_dataset("digits", "test")
    one = pgd(digits_cnn, x, y, eps=0.15, steps=3, generator=torch.Generator().manual_seed(3))
    eight = pgd(digits_cnn, x, y, eps=0.15, steps=3, restarts=8, generator=torch.Generator().manual_seed(3))
    assert not bool((one.success & ~eight.success).any())
    assert int(eight.success.sum()) >= int(one.success.sum()) + 5
