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
from test_attacks_nonneural import kind_model, model_kinds

pytestmark = pytest.mark.usefixtures("one_thread")

# One budget per norm, large enough that every attack breaks most of the digits CNN's correct answers and
# small enough that random noise of the same size breaks (almost) none.
EPS = {"linf": 0.25, "l2": 1.5, "l1": 8.0, "l0": 8}
# Lower bounds of the success rate among clean-correct examples (targeted: random targets, any attack).
UNTARGETED_FLOOR, TARGETED_FLOOR = 0.35, 0.12
# Black-box attacks (their config has ``max_queries``) run here on 1,000 queries per example, to keep it fast.
BLACKBOX_KWARGS: dict[str, dict[str, int]] = {"spsa": {"max_queries": 1000, "samples": 16}}


def budget(name: str) -> dict[str, int]:
    """The query budget of a black-box attack in these tests (nothing for the others)."""
    if "max_queries" not in attack_spec(name).defaults():
        return {}
    return BLACKBOX_KWARGS.get(name, {"max_queries": 1000})


@pytest.fixture(scope="module")
def digits_points() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "test")
    return x[:100], y[:100]


def digits_model(name: str, digits_cnn: nn.Module) -> nn.Module:
    """The digits CNN, or for an attack on one kind of model (its registered ``models``) a scikit-learn
    model of that kind fitted on the digits."""
    kinds = model_kinds(name)
    return kind_model(kinds[0], data="digits") if kinds else digits_cnn


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
    r = spec.fn(digits_model(name, digits_cnn), x[:4], y[:4], eps=EPS[spec.default_norm])
    assert {k: r.config[k] for k in spec.defaults()} == spec.defaults()
    assert r.config["norm"] == spec.default_norm == r.norm


def _success_among_correct(success: torch.Tensor, correct: torch.Tensor) -> float:
    return float((success & correct).sum()) / max(int(correct.sum()), 1)


@pytest.mark.parametrize("name", list_attacks())
def test_untargeted_strength_on_digits(name: str, digits_cnn: nn.Module,
                                       digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec = attack_spec(name)
    model = digits_model(name, digits_cnn)
    x, y = digits_points
    eps = EPS[spec.default_norm]
    r = spec.fn(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0), **budget(name))
    assert float(r.clean_correct.float().mean()) >= 0.9  # the model is good, so success means something
    rate = _success_among_correct(r.success[0], r.clean_correct)
    floor = TARGETED_FLOOR if r.targeted else UNTARGETED_FLOOR  # illc aims at its own (least-likely) targets
    assert rate >= floor, f"{name} broke only {rate:.1%} of the correct answers at eps={eps}"
    assert bool((r.distances[0] <= eps * (1 + 1e-5) + 1e-6).all())
    if spec.default_norm != "l0":  # the attack beats random noise of the same budget by far
        noise = LpBall(spec.default_norm, eps).random_init(x, torch.Generator().manual_seed(0))
        with torch.no_grad():
            noisy = model((x + noise).clamp(0, 1)).argmax(dim=1) != y
        assert rate >= 0.1 + 3 * _success_among_correct(noisy, r.clean_correct)


@pytest.mark.parametrize("name", [n for n in list_attacks() if attack_spec(n).targeted])
def test_targeted_strength_on_digits(name: str, digits_cnn: nn.Module,
                                     digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec = attack_spec(name)
    model = digits_model(name, digits_cnn)
    x, y = digits_points
    targets = random_targets(y, 10, torch.Generator().manual_seed(1))
    r = spec.fn(model, x, targets, eps=EPS[spec.default_norm], targeted=True, true_labels=y,
                generator=torch.Generator().manual_seed(0), **budget(name))
    assert float(r.success_rate[0]) >= TARGETED_FLOOR, f"{name} hit only {float(r.success_rate[0]):.1%} of targets"
    with torch.no_grad():
        hit = model(r.x_adv[0]).argmax(dim=1) == targets
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


# ---------------------------------------------------------------- tests that kill surviving mutants
# (mutation testing of threat.py and the attacks; see benchmarks/README.md, "Mutation testing")


@pytest.mark.parametrize("name", list_attacks())
def test_every_config_field_refuses_a_value_of_the_wrong_type(name: str) -> None:
    """A string where a number or flag belongs (a number where a string belongs) is a TypeError that names
    the field, for every hyper-parameter of every registered attack."""
    spec = attack_spec(name)
    for field, default in spec.defaults().items():
        wrong: object = 1.5 if isinstance(default, str) else "x"
        with pytest.raises(TypeError, match=field):
            spec.config(**{field: wrong})


@pytest.mark.parametrize("name", list_attacks())
def test_the_registry_entry_describes_the_attack(name: str, digits_cnn: nn.Module,
                                                 digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``targeted`` in the registry says whether the function takes ``targeted=True``; the summary is the
    first line of its docstring."""
    spec = attack_spec(name)
    assert isinstance(spec.targeted, bool) and isinstance(spec.min_norm, bool)
    assert spec.summary == (spec.fn.__doc__ or "").strip().splitlines()[0]
    x, y = (t[:4] for t in digits_points)
    eps = EPS[spec.default_norm]
    model = digits_model(name, digits_cnn)
    if spec.targeted:
        r = spec.fn(model, x, (y + 1) % 10, eps=eps, targeted=True, **budget(name))
        assert r.targeted
    else:
        with pytest.raises(ValueError, match="targeted"):
            spec.fn(model, x, y, eps=eps, targeted=True)


def test_min_norm_attacks_find_small_perturbations_on_digits(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """DeepFool lands within 15 % of C&W's median L2 (it follows the boundary; a broken accumulation of its
    steps overshoots far), and C&W grows its constant tenfold until a success bounds it: starting at 1e-3
    it still reaches most random targets in 4 rounds."""
    from advlab.attacks import cw, deepfool

    x, y = (t[:64] for t in digits_points)
    fool, carlini = deepfool(digits_cnn, x, y, eps=10.0), cw(digits_cnn, x, y, eps=10.0)
    both = fool.success[0] & carlini.success[0]
    assert float(both.float().mean()) > 0.9
    assert float(fool.distances[0][both].median()) <= 1.15 * float(carlini.distances[0][both].median())
    targets = random_targets(y, 10, torch.Generator().manual_seed(1))
    low = cw(digits_cnn, x, targets, eps=10.0, targeted=True, true_labels=y, initial_const=1e-3)
    assert float(low.success_rate[0]) >= 0.4


def test_apgd_spends_its_steps_and_stops_when_all_are_broken(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from advlab.attacks import apgd

    x, y = (t[:64] for t in digits_points)
    few = apgd(digits_cnn, x, y, eps=0.05, steps=15, generator=torch.Generator().manual_seed(0))
    assert not bool(few.success.all()) and few.n_backward == 15 * 64  # one gradient per step and example
    all_broken = apgd(digits_cnn, x, y, eps=0.5, steps=100, generator=torch.Generator().manual_seed(0))
    assert bool(all_broken.success.all()) and all_broken.n_backward <= 11 * 64  # checked every 10 steps


def test_cw_linf_stops_each_example_at_its_first_adversarial_iterate(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from advlab.attacks import cw_linf

    x, y = (t[:64] for t in digits_points)
    r = cw_linf(digits_cnn, x, y, eps=0.5, steps=50, generator=torch.Generator().manual_seed(0))
    assert bool(r.success.all()) and r.n_backward < 50 * 64 // 2


def test_jsma_raises_features_that_start_at_the_lower_bound(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """theta = 1: every feature below the upper bound may be chosen, dark (zero) pixels above all."""
    from advlab.attacks import jsma

    x, y = (t[:64] for t in digits_points)
    r = jsma(digits_cnn, x, y, eps=20)
    changed = r.x_adv[0] != x
    assert bool((r.x_adv[0][changed] > x[changed]).all())
    assert int((changed & (x == 0)).sum()) > 0


def test_pgd_restarts_keep_a_perturbed_point_for_the_unbroken(
    digits_cnn: nn.Module, digits_points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """An example no restart breaks keeps its highest-loss restart, not the clean input."""
    x, y = (t[:64] for t in digits_points)
    r = pgd(digits_cnn, x, y, eps=0.1, steps=3, restarts=4, generator=torch.Generator().manual_seed(0))
    failed = ~r.success[0]
    assert bool(failed.any()) and bool((r.distances[0][failed] > 0.05).all())


@pytest.mark.parametrize("name", [n for n in list_attacks() if "loss" in attack_spec(n).defaults()])
def test_the_loss_option_takes_effect(name: str, digits_cnn: nn.Module,
                                      digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each attack with a ``loss`` ascends the loss it is given: CE and the margin loss lead elsewhere."""
    spec = attack_spec(name)
    x, y = (t[:16] for t in digits_points)
    eps = EPS[spec.default_norm] / 2
    runs = [spec.fn(digits_cnn, x, y, eps=eps, loss=loss, generator=torch.Generator().manual_seed(0), **budget(name))
            for loss in ("ce", "margin")]
    assert not torch.equal(runs[0].x_adv, runs[1].x_adv)


@pytest.mark.parametrize("name", [n for n in list_attacks()
                                  if attack_spec(n).targeted and attack_spec(n).defaults().get("loss") == "ce"])
def test_targeted_dlr_uses_the_true_classes(name: str, digits_cnn: nn.Module,
                                            digits_points: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Targeted DLR reads the true class from ``true_labels`` (Croce & Hein's form); without them the best
    non-target class stands in, which leads elsewhere."""
    spec = attack_spec(name)
    x, y = (t[:16] for t in digits_points)
    targets = random_targets(y, 10, torch.Generator().manual_seed(1))
    eps = EPS[spec.default_norm] / 2
    runs = [spec.fn(digits_cnn, x, targets, eps=eps, targeted=True, loss="dlr", true_labels=truth,
                    generator=torch.Generator().manual_seed(0), **budget(name)) for truth in (y, None)]
    assert not torch.equal(runs[0].x_adv, runs[1].x_adv)
