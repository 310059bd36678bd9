"""Invariants every registered attack must satisfy, checked with hypothesis on a tiny fixed-weight model.

The tests iterate over the attack registry, so an attack registered later is covered by default: results
lie inside the ε-ball and the bounds, ε = 0 is the identity, a seed reproduces the result bit for bit and
whatever the batch size, the model (mode, parameter gradients, BatchNorm statistics) is left as it was,
``success`` matches a fresh re-check, float64 stays float64 and the cost counters are sane.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advlab.attacks import AlreadyAtTargetWarning, AttackContext, AttackResult, attack_spec, get_attack, list_attacks
from advlab.models.classifier import Classifier
from advlab.threat import LpBall, is_adversarial, lp_norm, random_targets
from conftest import tiny_cnn
from test_attacks_nonneural import kind_model, model_kinds

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
    # black-box attacks: a few queries per example
    "square": {"max_queries": 40},
    "nes": {"max_queries": 60, "samples": 4},
    "spsa": {"max_queries": 60, "samples": 4},
    "simba": {"max_queries": 40},
    "hsja": {"max_queries": 80, "steps": 3, "init_samples": 8, "init_tries": 10},
}


def fast_kwargs(name: str) -> dict[str, Any]:
    if name in FAST_KWARGS:
        return dict(FAST_KWARGS[name])
    params = inspect.signature(get_attack(name)).parameters
    return {"steps": 5} if "steps" in params else {}


def accepts(name: str, arg: str) -> bool:
    return arg in inspect.signature(get_attack(name)).parameters


def tiny_model(bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Classifier:
    """The shared tiny CNN (conftest.tiny_cnn) for this file's shape and classes."""
    model = tiny_cnn(bounds, seed, NUM_CLASSES)
    assert isinstance(model, Classifier)
    return model


def attack_model(name: str, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> Classifier:
    """The tiny CNN, or for an attack on one kind of model (its registered ``models``) a scikit-learn model
    of that kind fitted on random inputs of this file's shape, classes and bounds."""
    kinds = model_kinds(name)
    return kind_model(kinds[0], SHAPE, NUM_CLASSES, bounds) if kinds else tiny_model(bounds, seed)


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


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # random targets hit an example's clean prediction now and then; the tests below that care check for it
    pytest.mark.filterwarnings("ignore::advlab.attacks.AlreadyAtTargetWarning"),
]


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

    model = attack_model(attack_name, bounds)
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
    already = (clean_pred == result.labels) & result.targeted
    assert torch.equal(result.already_at_target, already)
    torch.testing.assert_close(result.success_rate, (result.success & ~already).float().mean(dim=1))
    if result.queries is None:  # at least the clean pass and one re-check per budget; every forward is a query
        assert result.n_forward >= n * (1 + b) and result.n_queries == result.n_forward
    else:  # black-box: the attacker's queries (a minimum-norm attack runs once), plus the unmetered checks
        assert result.queries.shape == (b, n) and result.queries.dtype == torch.int64
        runs = result.queries[:1] if spec.min_norm else result.queries
        assert result.n_queries == int(runs.sum()) and result.n_forward == result.n_queries + n * (1 + b)
    assert result.seconds > 0

    again = fn(model, x, y, generator=torch.Generator().manual_seed(seed), **kwargs)
    assert torch.equal(again.x_adv, result.x_adv), "the same seed must give the same x_adv"


def test_eps_zero_is_identity(attack_name: str) -> None:
    model = attack_model(attack_name)
    x, y = random_inputs(5, (0.0, 1.0), 7)
    for norm in attack_spec(attack_name).norms:
        result = get_attack(attack_name)(model, x, y, eps=0.0, norm=norm, **fast_kwargs(attack_name))
        assert torch.equal(result.x_adv[0], x)
        assert torch.equal(result.distances, torch.zeros(1, 5))
        assert torch.equal(result.success[0], is_adversarial(eval_logits(model, x), result.labels, result.targeted))


def test_works_on_a_plain_module(attack_name: str) -> None:
    """Any ``nn.Module`` returning logits is a model (bounds default to [0, 1]); eval mode is still used."""
    net = attack_model(attack_name).net
    net.train()
    x, y = random_inputs(4, (0.0, 1.0), 3)
    norm = attack_spec(attack_name).norms[0]
    result = get_attack(attack_name)(net, x, y, eps=[0.1], norm=norm, generator=torch.Generator().manual_seed(0),
                                     **fast_kwargs(attack_name))
    assert net.training
    assert bool((lp_norm(result.x_adv[0] - x, norm) <= 0.1 * (1 + 1e-5) + 1e-6).all())
    fresh = is_adversarial(eval_logits(net, result.x_adv[0]), result.labels, result.targeted)
    assert torch.equal(result.success[0], fresh)


BATCH_SIZES = (None, 7, 3)


@pytest.mark.parametrize("targeted", [False, True])
def test_batch_size_gives_the_same_result(attack_name: str, targeted: bool) -> None:
    """Rule 12: the same seed gives the same result whatever the batch size, random attacks included
    (randomness is drawn per example), with several budgets and, where an attack has them, restarts."""
    spec = attack_spec(attack_name)
    if targeted and not spec.targeted:
        pytest.skip("untargeted only")
    model = attack_model(attack_name)
    x, y = random_inputs(10, (0.0, 1.0), 11)
    kw = fast_kwargs(attack_name)
    if accepts(attack_name, "restarts"):
        kw["restarts"] = 3
    if targeted:
        kw.update(targeted=True, true_labels=y)
        y = random_targets(y, NUM_CLASSES, torch.Generator().manual_seed(3))
    for norm in spec.norms:
        eps = [4.0, 12.0] if norm == "l0" else [0.1, 0.3]
        runs = [get_attack(attack_name)(model, x, y, eps=eps, norm=norm, generator=torch.Generator().manual_seed(0),
                                        batch_size=b, **kw) for b in BATCH_SIZES]
        whole = runs[0]
        for b, chunked in zip(BATCH_SIZES[1:], runs[1:], strict=True):
            # float round-off of batched reductions aside (about 1e-7), the very same points
            torch.testing.assert_close(chunked.x_adv, whole.x_adv, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, b=b, norm=norm: f"batch_size={b}, {norm}: {m}")
            assert torch.equal(chunked.success, whole.success), f"batch_size={b}, {norm}"
            assert torch.equal(chunked.clean_correct, whole.clean_correct)


def test_restarts_do_not_depend_on_how_they_are_grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    """PGD batches restarts up to REPLICA_LIMIT rows: restart r of example i is the same either way."""
    import advlab.attacks._pgd as pgd_module

    model = tiny_model()
    x, y = random_inputs(6, (0.0, 1.0), 4)
    kw = {"eps": [0.05, 0.2], "steps": 5, "restarts": 4}
    together = get_attack("pgd")(model, x, y, generator=torch.Generator().manual_seed(1), **kw)
    monkeypatch.setitem(pgd_module.REPLICA_LIMIT, "cpu", 6)  # one restart at a time
    apart = get_attack("pgd")(model, x, y, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(apart.x_adv, together.x_adv, rtol=1e-5, atol=1e-6)
    assert torch.equal(apart.success, together.success)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_an_unchunked_pgd_draws_exactly_one_random_start_from_the_generator(norm: str) -> None:
    """Seeded results of earlier versions stand: without chunks, PGD's random start is
    ``LpBall.random_init(x, generator, radial=True)``, and it consumes the generator just as that does."""
    model = tiny_model()
    x, y = random_inputs(5, (0.0, 1.0), 2)
    g = torch.Generator().manual_seed(9)
    get_attack("pgd")(model, x, y, eps=0.2, norm=norm, steps=1, generator=g)
    reference = torch.Generator().manual_seed(9)
    LpBall(norm, 0.2).random_init(x, reference, radial=True)
    assert torch.equal(g.get_state(), reference.get_state())
    chunked = torch.Generator().manual_seed(9)
    get_attack("pgd")(model, x, y, eps=0.2, norm=norm, steps=1, generator=chunked, batch_size=2)
    assert torch.equal(chunked.get_state(), reference.get_state())


def test_without_a_generator_the_global_seed_reproduces_whatever_the_batch_size() -> None:
    model = tiny_model()
    x, y = random_inputs(6, (0.0, 1.0), 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        a = get_attack("pgd")(model, x, y, eps=0.2, steps=3)
        torch.manual_seed(123)
        b = get_attack("pgd")(model, x, y, eps=0.2, steps=3, batch_size=4)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=1e-5, atol=1e-6)


def test_a_kernel_drawing_per_chunk_data_is_stopped() -> None:
    """The engine refuses random draws that differ between chunks (they would tie results to the batch size)."""
    ctx = AttackContext(tiny_model(), (0.0, 1.0), torch.Generator().manual_seed(0), False)
    x = torch.rand(4, *SHAPE)
    ctx.begin_call(x)
    ball = LpBall("linf", 0.1)
    ctx.begin_chunk(x[:2], lambda _logits: None, None, slice(0, 2))
    first = ctx.random_init(ball).rows()
    ctx.begin_chunk(x[2:], lambda _logits: None, None, slice(2, 4))
    second = ctx.random_init(ball).rows()
    torch.testing.assert_close(torch.cat([first, second]), ball.random_init(x, torch.Generator().manual_seed(0)))
    with pytest.raises(RuntimeError, match="first chunk did not make"):
        ctx.random_init(ball)


def test_random_draws_are_drawn_again_when_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draws beyond the cache are replayed from their recorded generator state: the same numbers."""
    import advlab.attacks._random as random_module

    model = tiny_model()
    x, y = random_inputs(9, (0.0, 1.0), 6)
    kw = {"eps": [0.1, 0.3], "steps": 3, "restarts": 2, "generator": torch.Generator().manual_seed(2)}
    kept = get_attack("pgd")(model, x, y, batch_size=4, **kw)
    monkeypatch.setattr(random_module, "_CACHE_FLOOR", 0)
    monkeypatch.setattr(random_module, "_CACHE_FACTOR", 0)
    kw["generator"] = torch.Generator().manual_seed(2)
    replayed = get_attack("pgd")(model, x, y, batch_size=4, **kw)
    assert torch.equal(kept.x_adv, replayed.x_adv)


# ---------------------------------------------------------------- float64


def test_float64_models_and_inputs(attack_name: str) -> None:
    """A float64 model attacked with float64 inputs stays float64 throughout (no silent cast)."""
    model = attack_model(attack_name).double()
    x, labels = random_inputs(5, (0.0, 1.0), 12)
    x = x.double()
    spec = attack_spec(attack_name)
    for norm in spec.norms:
        eps = [6.0] if norm == "l0" else [0.05, 0.3]
        kwargs: dict[str, Any] = dict(fast_kwargs(attack_name), eps=eps, norm=norm)
        y = labels
        if spec.targeted:
            y = random_targets(labels, NUM_CLASSES, torch.Generator().manual_seed(1))
            kwargs.update(targeted=True, true_labels=labels)
        result = get_attack(attack_name)(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
        assert result.x_adv.dtype == torch.float64 and result.distances.dtype == torch.float64
        for i, e in enumerate(eps):
            assert bool((lp_norm(result.x_adv[i] - x, norm) <= e * (1 + 1e-9) + 1e-12).all())
            fresh = is_adversarial(eval_logits(model, result.x_adv[i]), result.labels, result.targeted)
            assert torch.equal(result.success[i], fresh)


# ---------------------------------------------------------------- examples already at their target


def test_examples_already_at_their_target_are_not_attack_successes(attack_name: str) -> None:
    spec = attack_spec(attack_name)
    if not spec.targeted:
        pytest.skip("untargeted only")
    model = attack_model(attack_name)
    x, _ = random_inputs(6, (0.0, 1.0), 13)
    clean_pred = eval_logits(model, x).argmax(1)
    # the first three examples' targets are what the model already predicts; the others' are not
    other = (clean_pred + 1) % NUM_CLASSES
    targets = torch.where(torch.arange(6) < 3, clean_pred, other)
    norm = spec.norms[0]
    eps = [0.0, 8.0] if norm == "l0" else [0.0, 0.3]
    with pytest.warns(AlreadyAtTargetWarning, match=rf"{attack_name}: 3 of 6 examples are already classified"):
        result = get_attack(attack_name)(model, x, targets, eps=eps, norm=norm, targeted=True,
                                         generator=torch.Generator().manual_seed(0), **fast_kwargs(attack_name))
    assert torch.equal(result.already_at_target, torch.arange(6) < 3)
    assert result.n_already_at_target == 3
    # ``success`` says where x_adv is at the target; the rate counts what the attack achieved
    assert torch.equal(result.success[0], torch.arange(6) < 3)  # eps = 0: only those already there
    assert float(result.success_rate[0]) == 0.0
    expected = (result.success[1] & (torch.arange(6) >= 3)).float().mean()
    assert float(result.success_rate[1]) == pytest.approx(float(expected))
    assert result.summary()[0]["success_rate"] == 0.0


def test_untargeted_runs_have_nothing_already_at_a_target() -> None:
    model = tiny_model()
    x, y = random_inputs(6, (0.0, 1.0), 13)
    result = get_attack("fgsm")(model, x, y, eps=[0.0, 0.3])
    assert not bool(result.already_at_target.any()) and result.n_already_at_target == 0
    torch.testing.assert_close(result.success_rate, result.success.float().mean(dim=1))


def test_evaluate_attack_counts_and_warns_examples_already_at_their_target() -> None:
    from advlab.evaluate import evaluate_attack

    model = tiny_model()
    x, y = random_inputs(8, (0.0, 1.0), 14)
    clean_pred = eval_logits(model, x).argmax(1)
    targets = torch.where(clean_pred != y, clean_pred, (y + 1) % NUM_CLASSES)  # misclassified: their prediction
    n_already = int((clean_pred != y).sum())
    assert n_already > 0
    with pytest.warns(AlreadyAtTargetWarning):
        record = evaluate_attack(model, x, y, "bim", eps=[0.0, 0.3], targets=targets, steps=3)
    assert record.n_already_at_target == n_already and record.to_dict()["n_already_at_target"] == n_already
    assert record.results[0]["success_rate"] == 0.0  # eps = 0 achieves nothing
