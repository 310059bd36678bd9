"""Papernot's substitute attack: query accounting (exact, against the schedule's formula and the oracle's own
count), the budget, Jacobian-based augmentation against its closed form on linear substitutes, the periodic
step, the seed split, and the report's definitions; behaviour on the bundled digits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.blackbox import (
    EnsembleSurrogate,
    jacobian_augmentation,
    periodic_step,
    schedule_queries,
    shift_step,
    split_seed_set,
    substitute_attack,
    train_substitute,
)
from advlab.blackbox._substitute import _shift
from advlab.oracle import Oracle, QueryBudgetError
from advlab.train import Recipe, fit

FAST = Recipe(epochs=1, lr=1e-2, optimizer="sgd", momentum=0.9, batch_size=64)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module() -> Iterator[None]:
    """One intra-op thread for the whole module (the module-scoped model is trained here too): tiny models gain
    nothing from more, and on a loaded machine extra spinning threads slow training down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    return advlab.load_dataset("digits", "test")


@pytest.fixture(scope="module")
def target() -> nn.Module:
    """An MLP trained on the digits training split (about 95% test accuracy): the oracle's model."""
    x, y = advlab.load_dataset("digits", "train")
    model = advlab.create_model("mlp", dataset="digits", hidden=(64,), generator=torch.Generator().manual_seed(0))
    fit(model, x, y, epochs=5, batch_size=64, lr=3e-3, seed=0)
    return model.eval()


class FrozenLinear(nn.Module):
    """Logits ``W x + b`` with fixed ``W``, ``b``; its one parameter has a zero gradient, so training leaves it
    unchanged and every augmentation step has a closed form."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("b", bias)
        self.dummy = nn.Parameter(torch.zeros(()))
        self.bounds = (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.b + 0.0 * self.dummy


def linear(k: int = 3, d: int = 6, seed: int = 0) -> FrozenLinear:
    gen = torch.Generator().manual_seed(seed)
    return FrozenLinear(torch.randn(k, d, generator=gen), torch.randn(k, generator=gen))


# ------------------------------------------------------------------------------------------ schedule


def test_periodic_step_flips_every_tau() -> None:
    assert [periodic_step(0.1, r, 3) for r in range(9)] == [0.1] * 3 + [-0.1] * 3 + [0.1] * 3
    assert [periodic_step(0.2, r, 1) for r in range(4)] == [0.2, -0.2, 0.2, -0.2]
    assert [periodic_step(0.1, r, None) for r in range(5)] == [0.1] * 5


def test_schedule_formula() -> None:
    assert schedule_queries(150, 6) == 150 * 2**5 == 4800
    assert schedule_queries(150, 1) == 150
    # sigma = 3 doublings, then kappa = 100 a round: 150 * 8 + 100 * 2
    assert schedule_queries(150, 6, reservoir=100, reservoir_after=3) == 1400
    assert schedule_queries(10, 5, reservoir=100, reservoir_after=1) == 20 + 20 + 40 + 80  # kappa capped by |S|


@pytest.mark.parametrize(("rounds", "reservoir", "after"), [(4, None, 3), (5, 10, 2), (3, 7, 0), (1, None, 3)])
def test_queries_equal_oracle_count_and_formula(
    digits: tuple[Tensor, Tensor], rounds: int, reservoir: int | None, after: int
) -> None:
    x, _ = digits
    model = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
    oracle = Oracle(model, output="labels")
    sub = train_substitute(oracle, x[:30], model="softmax", rounds=rounds, reservoir=reservoir,
                           reservoir_after=after, recipe=FAST)
    expected = schedule_queries(30, rounds, reservoir, after)
    assert sub.queries == oracle.total_queries == expected == sub.x.shape[0] == sub.labels.shape[0]
    assert [row["queries"] for row in sub.history] == [row["points"] for row in sub.history]
    assert sub.history[-1]["points"] == expected and len(sub.history) == rounds and not sub.stopped_early
    # every label the substitute trained on is the oracle's label of that point
    assert torch.equal(sub.labels, model(sub.x).argmax(1))
    assert oracle.verification_queries == 0


def test_budget_stops_the_run_with_a_report(digits: tuple[Tensor, Tensor]) -> None:
    x, _ = digits
    model = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
    oracle = Oracle(model, output="labels", max_total_queries=100)
    sub = train_substitute(oracle, x[:30], model="softmax", rounds=4, recipe=FAST)
    # 30 + 30 = 60 labelled; the third round would need 60 more (120 > 100): stop before querying them
    assert sub.stopped_early and sub.stop_reason is not None and "budget" in sub.stop_reason
    assert sub.queries == oracle.total_queries == 60 <= 100
    assert [row["points"] for row in sub.history] == [30, 60]
    with pytest.raises(QueryBudgetError, match="seed points"):
        train_substitute(Oracle(model, output="labels", max_total_queries=20), x[:30], model="softmax", recipe=FAST)


# ------------------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("lam", [0.1, -0.25])
def test_augmentation_closed_form_logits(lam: float) -> None:
    model = linear()
    x = torch.rand(40, 1, 2, 3, generator=torch.Generator().manual_seed(1))
    x[:5] = 0.0  # on the bounds: clipped
    x[5:10] = 1.0
    labels = torch.arange(40) % 3
    got = jacobian_augmentation(model, x, labels, lam, batch_size=7)
    want = (x + lam * model.weight[labels].sign().reshape(x.shape)).clamp(0, 1)
    assert torch.equal(got, want)


def test_augmentation_closed_form_probs() -> None:
    model = linear(k=4, d=6, seed=3)
    x = torch.rand(25, 1, 2, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(25) % 4
    got = jacobian_augmentation(model, x, labels, 0.1, jacobian="probs")
    # d softmax_c / dx = p_c (W_c - sum_j p_j W_j)
    p = torch.softmax(model(x), 1)
    direction = model.weight[labels] - p @ model.weight
    want = (x + 0.1 * direction.sign().reshape(x.shape)).clamp(0, 1)
    assert torch.equal(got, want)


def test_augmentation_leaves_the_model_as_it_was() -> None:
    model = advlab.create_model("cnn-small", in_shape=(1, 8, 8), num_classes=10)
    model.train()
    x = torch.rand(6, 1, 8, 8)
    jacobian_augmentation(model, x, torch.arange(6), 0.1)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_rounds_use_the_oracle_label_rows_and_the_flipping_step(digits: tuple[Tensor, Tensor]) -> None:
    """With a substitute that training cannot change, every new point of every round is its parent moved by
    ``lambda_rho * sign(W[O(parent)])``, with lambda's sign flipping every ``tau`` rounds."""
    x = digits[0][:8]
    oracle_model = advlab.create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(4))
    sub_model = linear(k=10, d=64, seed=5)
    oracle = Oracle(oracle_model, output="labels")
    sub = train_substitute(oracle, x, model=sub_model, rounds=6, lam=0.1, tau=2, recipe=FAST)
    assert [row["lam"] for row in sub.history] == [None, 0.1, 0.1, -0.1, -0.1, 0.1]
    start = 8
    for rho in range(5):
        parents, parent_y = sub.x[:start], sub.labels[:start]
        step = periodic_step(0.1, rho, 2)
        want = (parents + step * sub_model.weight[parent_y].sign().reshape(parents.shape)).clamp(0, 1)
        assert torch.equal(sub.x[start : 2 * start], want)
        assert torch.equal(sub.labels[start : 2 * start], oracle_model(want).argmax(1))
        start *= 2


# ------------------------------------------------------------------------------------------ seed set


def test_split_seed_set_is_balanced_and_disjoint(digits: tuple[Tensor, Tensor]) -> None:
    _, y = digits
    seed_idx, rest = split_seed_set(y, 150, seed=3)
    assert len(seed_idx) == 150 and len(rest) == len(y) - 150
    assert not set(seed_idx.tolist()) & set(rest.tolist())
    assert sorted(seed_idx.tolist() + rest.tolist()) == list(range(len(y)))
    counts = torch.bincount(y[seed_idx], minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert torch.equal(rest, rest.sort().values)
    again, _ = split_seed_set(y, 150, seed=3)
    assert torch.equal(seed_idx, again)
    # a class with too few examples gives all it has; the others fill up
    skewed = torch.tensor([0] * 50 + [1] * 2)
    idx, _ = split_seed_set(skewed, 10)
    assert torch.bincount(skewed[idx]).tolist() == [8, 2]
    with pytest.raises(ValueError, match="leaves no example"):
        split_seed_set(y, len(y))


# ------------------------------------------------------------------------------------------ behaviour


def test_substitute_agrees_with_the_oracle_above_chance(
    digits: tuple[Tensor, Tensor], target: nn.Module
) -> None:
    x, y = digits
    seed_idx, rest = split_seed_set(y, 150, seed=0)
    oracle = Oracle(target, output="labels")
    sub = train_substitute(oracle, x[seed_idx], model="mlp", dataset="digits", rounds=3, epochs=5,
                           x_val=x[rest], y_val=y[rest], seed=0)
    assert sub.queries == 600
    last = sub.history[-1]
    assert last["agreement"] > 0.6 and last["accuracy"] > 0.6  # chance: 0.1
    assert oracle.total_queries == 600  # the held-out evaluation is not charged


def test_substitute_attack_report(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, y = digits
    seed_idx, rest = split_seed_set(y, 150, seed=0)
    oracle = Oracle(target, output="labels", max_total_queries=5000)
    rep = substitute_attack(oracle, x[seed_idx], x[rest], y[rest], attack="fgsm", eps=0.3, model="mlp",
                            dataset="digits", rounds=3, epochs=5, seed=0)
    n = len(rest)
    # the default crafting labels are the oracle's: one more query per attacked point
    assert rep.n == n and rep.queries == 600 and rep.attack_queries == n and oracle.total_queries == 600 + n
    assert rep.craft_labels == "oracle" and rep.config["attack_config"]["loss"] == "margin"
    # the threat model: inside the eps ball and the bounds
    delta = (rep.x_adv - x[rest]).abs().flatten(1).amax(1)
    assert bool((delta <= 0.3 + 1e-6).all()) and float(rep.x_adv.min()) >= 0 and float(rep.x_adv.max()) <= 1
    # the definitions, recomputed from the oracle's model
    with torch.no_grad():
        clean, adv = target(x[rest]).argmax(1), target(rep.x_adv).argmax(1)
    ok = clean == y[rest]
    assert rep.n_oracle_correct == int(ok.sum())
    assert rep.oracle_misclassification == pytest.approx(float((adv[ok] != y[rest][ok]).double().mean()))
    assert rep.oracle_error_rate == pytest.approx(float((adv != y[rest]).double().mean()))
    assert rep.oracle_clean_accuracy == pytest.approx(float(ok.double().mean()))
    sub_pred = rep.substitute.model(x[rest]).argmax(1)
    assert rep.substitute_accuracy == pytest.approx(float((sub_pred == y[rest]).double().mean()))
    assert rep.substitute_agreement == pytest.approx(float((sub_pred == clean).double().mean()))
    assert rep.oracle_misclassification > 0.3  # FGSM at 0.3 transfers on digits
    payload = rep.to_dict()
    for key in ("substitute_accuracy", "queries", "oracle_misclassification", "history", "config", "seconds"):
        assert key in payload
    assert payload["config"]["substitute"]["expected_queries"] == 600


def test_crafting_with_oracle_labels_is_charged(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, y = digits
    oracle = Oracle(target, output="labels")
    rep = substitute_attack(oracle, x[:20], x[20:60], y[20:60], model="softmax", rounds=2, recipe=FAST,
                            craft_labels="oracle")
    assert rep.queries == 40 and rep.attack_queries == 40 and oracle.total_queries == 80
    tight = Oracle(target, output="labels", max_total_queries=50)
    with pytest.raises(QueryBudgetError, match="craft"):
        substitute_attack(tight, x[:20], x[20:60], y[20:60], model="softmax", rounds=2, recipe=FAST,
                          craft_labels="oracle")


def test_bad_arguments(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, y = digits
    oracle = Oracle(target, output="labels")
    with pytest.raises(ValueError, match=r"unknown attack 'nope'.*fgsm"):
        substitute_attack(oracle, x[:10], x[10:20], y[10:20], attack="nope")
    with pytest.raises(ValueError, match="steps"):
        substitute_attack(oracle, x[:10], x[10:20], y[10:20], attack="fgsm", attack_options={"steps": 3})
    with pytest.raises(ValueError, match="norm"):
        substitute_attack(oracle, x[:10], x[10:20], y[10:20], attack="fgsm", norm="l2")
    with pytest.raises(ValueError, match="lam"):
        train_substitute(oracle, x[:10], lam=0.0)
    with pytest.raises(ValueError, match="rounds"):
        train_substitute(oracle, x[:10], rounds=0)
    with pytest.raises(TypeError, match="Oracle"):
        train_substitute(target, x[:10])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown substitute model"):
        train_substitute(oracle, x[:10], model="nope")
    with pytest.raises(ValueError, match="bounds"):
        train_substitute(oracle, x[:10] * 2 + 1)
    assert oracle.total_queries == 0  # every mistake is found before the first query


def test_bad_improvement_options(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, _ = digits
    oracle = Oracle(target, output="labels")
    with pytest.raises(ValueError, match="ensemble"):
        train_substitute(oracle, x[:10], ensemble=0)
    with pytest.raises(ValueError, match="ensemble > 1"):
        train_substitute(oracle, x[:10], model=linear(10, 64), ensemble=2)
    with pytest.raises(ValueError, match="shift"):
        train_substitute(oracle, x[:10], shift=-1)
    with pytest.raises(ValueError, match="final_epochs"):
        train_substitute(oracle, x[:10], final_epochs=0)
    assert oracle.total_queries == 0


# ------------------------------------------------------------------------------------------ improvements


def test_shift_translates_each_example_within_the_range() -> None:
    x = torch.rand(64, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    out = _shift(x, 1, torch.Generator().manual_seed(1), fill=-1.0)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    seen = set()
    for i in range(len(x)):  # each output is exactly one of the 9 translations of its input
        hits = [(dy, dx) for dy in range(3) for dx in range(3)
                if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 6])]
        assert len(hits) >= 1
        seen.add(hits[0])
    assert len(seen) == 9  # and every translation occurs among 64 draws
    assert torch.equal(_shift(x, 1, torch.Generator().manual_seed(1), fill=-1.0), out)  # deterministic


def test_shift_step_trains_on_shifted_batches() -> None:
    seen: list[Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 2)

        def forward(self, x: Tensor) -> Tensor:
            seen.append(x.detach().clone())
            return self.lin(x.flatten(1))

    x = torch.rand(8, 1, 4, 4) + 1.0  # no zero pixel: a shifted batch shows the zero fill
    fit(Spy(), x, torch.zeros(8, dtype=torch.long), epochs=1, batch_size=8, step=shift_step(2))
    assert len(seen) == 1 and (seen[0] == 0).any() and not torch.equal(seen[0], x)
    with pytest.raises(ValueError, match="image"):
        fit(Spy(), x.flatten(1), torch.zeros(8, dtype=torch.long), epochs=1, step=shift_step(1))


def test_ensemble_costs_no_query_and_fuses_its_members(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, y = digits
    single_oracle, ens_oracle = Oracle(target, output="labels"), Oracle(target, output="labels")
    single = train_substitute(single_oracle, x[:30], model="mlp", dataset="digits", rounds=3, recipe=FAST, seed=2)
    ens = train_substitute(ens_oracle, x[:30], model="mlp", dataset="digits", rounds=3, recipe=FAST, seed=2,
                           ensemble=3, x_val=x[30:130], y_val=y[30:130])
    # the same labelled points, hence the same queries; the first member is the single run's substitute
    assert ens.queries == single.queries == ens_oracle.total_queries == 120
    assert torch.equal(ens.x, single.x) and torch.equal(ens.labels, single.labels)
    assert len(ens.members) == 3 and isinstance(ens.model, EnsembleSurrogate)
    for a, b in zip(ens.members[0].parameters(), single.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the members differ (other initialisations), and the fused output is the log of their mean softmax
    assert not torch.equal(ens.members[1](x[:5]), ens.members[2](x[:5]))
    with torch.no_grad():
        mix = torch.stack([torch.softmax(m(x[:20]), 1) for m in ens.members]).mean(0)
        assert torch.allclose(ens.model(x[:20]).exp(), mix, atol=1e-5)
    last = ens.history[-1]
    assert {"ensemble_accuracy", "ensemble_agreement", "ensemble_train_agreement"} <= set(last)
    assert ens.config["ensemble"] == 3


def test_final_epochs_train_only_the_last_round_longer(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    x, _ = digits
    runs = [train_substitute(Oracle(target, output="labels"), x[:30], model="softmax", dataset="digits", rounds=2,
                             recipe=FAST, seed=1, final_epochs=f) for f in (None, 1, 3)]
    default, same, longer = runs
    for a, b in zip(default.model.parameters(), same.model.parameters(), strict=True):
        assert torch.equal(a, b)  # final_epochs equal to the per-round epochs: the paper's schedule
    assert torch.equal(default.x, longer.x)  # the augmentation happened before the last round
    assert any(not torch.equal(a, b) for a, b in zip(default.model.parameters(), longer.model.parameters(),
                                                      strict=True))
    assert longer.config["final_epochs"] == 3 and default.config["final_epochs"] == 1


def test_improved_substitute_attack_stays_in_the_threat_model(
    digits: tuple[Tensor, Tensor], target: nn.Module
) -> None:
    x, y = digits
    seed_idx, rest = split_seed_set(y, 100, seed=0)
    oracle = Oracle(target, output="labels", max_total_queries=400)
    rep = substitute_attack(oracle, x[seed_idx], x[rest], y[rest], attack="fgsm", eps=0.3, model="mlp",
                            dataset="digits", rounds=3, epochs=4, ensemble=2, final_epochs=6, shift=1, seed=0,
                            attack_options={"loss": "margin"}, craft_labels="substitute")
    assert rep.queries == 400 == oracle.total_queries and rep.attack_queries == 0
    delta = (rep.x_adv - x[rest]).abs().flatten(1).amax(1)
    assert bool((delta <= 0.3 + 1e-6).all()) and float(rep.x_adv.min()) >= 0 and float(rep.x_adv.max()) <= 1
    assert rep.substitute_accuracy > 0.5 and rep.oracle_misclassification > 0.3
    cfg = rep.to_dict()["config"]["substitute"]
    assert (cfg["ensemble"], cfg["final_epochs"], cfg["shift"]) == (2, 6, 1)


def test_cnn_small_substitute_has_no_dropout_by_default(digits: tuple[Tensor, Tensor], target: nn.Module) -> None:
    """advlab's default substitute options (SUBSTITUTE_MODEL_OPTIONS) apply to a zoo name, and ``{}`` restores
    the zoo's defaults."""
    from advlab.blackbox import SUBSTITUTE_MODEL_OPTIONS

    x = digits[0][:20]
    default = train_substitute(Oracle(target, output="labels"), x, model="cnn-small", dataset="digits", rounds=1,
                               epochs=1)
    assert default.config["model_options"] == SUBSTITUTE_MODEL_OPTIONS["cnn-small"] == {"conv_dropout": 0.0,
                                                                                        "dropout": 0.0}
    dropouts = [m.p for m in default.model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    assert all(p == 0.0 for p in dropouts)
    zoo = train_substitute(Oracle(target, output="labels"), x, model="cnn-small", dataset="digits", rounds=1,
                           epochs=1, model_options={})
    assert zoo.config["model_options"] == {}
    assert any(m.p > 0 for m in zoo.model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)))
