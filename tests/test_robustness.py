"""The worst-case cascade (:func:`advlab.evaluate._robustness.robustness`), its suites and APGD's early stop,
on a small CNN trained on the bundled digits."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advlab.attacks import RobustnessWarning, apgd, attack_spec, list_attacks
from advlab.data import load_dataset
from advlab.evaluate._evaluation import Evaluation, Found
from advlab.evaluate._robustness import _base_seed, _derive, merge_found, robustness
from advlab.evaluate._suites import Suite, SuiteAttack, get_suite, list_suites, load_suite, register_suite
from advlab.threat import LpBall

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "suites" / "pgd-and-square.toml"
EPS = {"linf": [0.05, 0.1, 0.2], "l2": [0.5, 1.0, 2.0]}
# A suite with a gradient attack, a targeted stage and a black-box stage, cheap enough for the tests.
SMALL = Suite("test-small", (
    SuiteAttack("apgd", {"steps": 10, "early_stop": True}, name="apgd-ce"),
    SuiteAttack("apgd", {"steps": 10, "loss": "dlr", "early_stop": True}, targets="top", top_k=3, name="apgd-t"),
    SuiteAttack("square", {"max_queries": 60}, name="square"),
))


@pytest.fixture(scope="module")
def points() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "test")
    return x[:48], y[:48]


@pytest.fixture(scope="module")
def evaluations(digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Evaluation]:
    x, y = points
    torch.set_num_threads(1)
    return {norm: robustness(digits_cnn, x, y, norm=norm, eps=EPS[norm], suite=SMALL, checks=False,
                             generator=torch.Generator().manual_seed(0)) for norm in ("linf", "l2")}


# ------------------------------------------------------------------------------------------ the cascade


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_adversarial_example_is_inside_the_ball_and_bounds_and_misclassified(
    digits_cnn: nn.Module, evaluations: dict[str, Evaluation], norm: str
) -> None:
    ev = evaluations[norm]
    assert ev.eps == EPS[norm] and ev.n == 48 and ev.clean_accuracy > 0.9
    with torch.no_grad():
        clean_pred = digits_cnn(ev.x).argmax(dim=1)
    assert torch.equal(ev.clean_correct, clean_pred == ev.y)
    for i, e in enumerate(ev.eps):
        broken = ev.clean_correct & ~ev.robust[i]
        assert torch.equal(broken, ev.broken_by[i] >= 0)
        assert bool(torch.isnan(ev.distances[i][~broken]).all())
        assert torch.equal(ev.x_adv[i][~broken], ev.x[~broken])  # the clean input where nothing was found
        adv = ev.x_adv[i][broken]
        assert adv.shape[0] > 0
        dist = LpBall(norm, 0.0).distance(ev.x[broken], adv)
        assert bool((dist <= e * (1 + 1e-5) + 1e-6).all()), (dist.max(), e)
        assert torch.allclose(dist, ev.distances[i][broken])
        assert bool((adv >= 0).all() and (adv <= 1).all())
        with torch.no_grad():
            assert bool((digits_cnn(adv).argmax(dim=1) != ev.y[broken]).all())
    assert ev.robust_accuracy[-1] < ev.robust_accuracy[0] < ev.clean_accuracy  # the attacks do break points


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_is_monotone_and_broken_points_stay_broken(evaluations: dict[str, Evaluation],
                                                                    norm: str) -> None:
    ev = evaluations[norm]
    acc = ev.robust_accuracy
    assert all(a >= b for a, b in itertools.pairwise(acc)), acc
    for i in range(1, len(ev.eps)):
        before = ev.clean_correct & ~ev.robust[i - 1]
        assert bool((~ev.robust[i][before]).all())
        assert torch.equal(ev.x_adv[i][before], ev.x_adv[i - 1][before])  # the same example, exactly
        assert torch.equal(ev.broken_by[i][before], ev.broken_by[i - 1][before])
    assert bool((~ev.robust[:, ~ev.clean_correct]).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_stages_attack_only_the_survivors(evaluations: dict[str, Evaluation], norm: str) -> None:
    ev = evaluations[norm]
    assert [s.attack for s in ev.stages] == ["apgd-ce", "apgd-t", "square"] * len(ev.eps)
    survivors = int(ev.clean_correct.sum())
    for i, e in enumerate(ev.eps):
        for s in ev.stages[3 * i : 3 * i + 3]:
            assert s.eps == e
            assert s.n_attacked == survivors, (s, survivors)
            survivors -= s.n_broken
            assert s.robust_accuracy == pytest.approx(survivors / ev.n)
            if s.n_attacked:
                assert s.n_forward > 0
                # the cost of each point stays within the stage's budget of passes per point
                assert max(s.n_forward, s.n_queries) <= s.n_attacked * s.pass_budget
        assert survivors == int(ev.robust[i].sum())
    square = [s for s in ev.stages if s.attack == "square"]
    assert all(s.n_backward == 0 and s.n_queries <= s.n_attacked * 60 for s in square)
    counts = ev.broken_counts()
    assert [sum(c.values()) for c in counts] == [int((ev.clean_correct & ~r).sum()) for r in ev.robust]


def test_the_cascade_is_at_least_as_strong_as_each_stage_alone(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor], evaluations: dict[str, Evaluation]
) -> None:
    x, y = points
    ev = evaluations["linf"]
    for e_index, e in enumerate(ev.eps):
        for stage in SMALL.attacks:
            alone = robustness(digits_cnn, x, y, eps=[e], suite=Suite("alone", (stage,)), checks=False,
                               generator=torch.Generator().manual_seed(1))
            assert ev.robust_accuracy[e_index] <= alone.robust_accuracy[0], (stage.name, e)


def test_same_seed_same_evaluation_whatever_the_batch_size(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor], evaluations: dict[str, Evaluation]
) -> None:
    x, y = points
    ref = evaluations["linf"]
    # the budgets in another order, the points in chunks of 7
    other = robustness(digits_cnn, x, y, eps=EPS["linf"][::-1], suite=SMALL, checks=False, batch_size=7,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(other.robust, ref.robust)
    assert torch.equal(other.broken_by, ref.broken_by)
    assert torch.equal(other.x_adv, ref.x_adv)
    assert [dataclasses.replace(s, seconds=0) for s in other.stages] == [
        dataclasses.replace(s, seconds=0) for s in ref.stages]
    assert other.config["seed"] == 0 and other.config["batch_size"] == 7
    different = robustness(digits_cnn, x, y, eps=EPS["linf"], suite=SMALL, checks=False,
                           generator=torch.Generator().manual_seed(5))
    assert not torch.equal(different.x_adv, ref.x_adv)


def test_targeted_stages_aim_at_the_most_likely_other_classes_in_order(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import advlab.evaluate._robustness as rob

    x, y = points
    calls: list[dict[str, Any]] = []
    real = attack_spec("apgd")

    def recording(model: nn.Module, xs: torch.Tensor, labels: torch.Tensor, **kw: Any) -> Any:
        result = real.fn(model, xs, labels, **kw)
        calls.append({"x": xs, "labels": labels, "true": kw.get("true_labels"), "targeted": kw.get("targeted"),
                      "broken": result.adv_pred[0] != (kw["true_labels"] if kw.get("targeted") else labels)})
        return result

    monkeypatch.setattr(rob, "attack_spec", lambda name: dataclasses.replace(real, fn=recording))
    suite = Suite("t", (SuiteAttack("apgd", {"steps": 5, "loss": "dlr"}, targets="top", top_k=4),))
    robustness(digits_cnn, x, y, eps=[0.1], suite=suite, checks=False, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4 and all(c["targeted"] for c in calls)
    with torch.no_grad():
        logits = digits_cnn(x)
    index = {tuple(row.flatten().tolist()): i for i, row in enumerate(x)}
    previous: set[int] | None = None
    for k, call in enumerate(calls):
        rows = [index[tuple(row.flatten().tolist())] for row in call["x"]]
        assert torch.equal(call["true"], y[rows])
        for i, target in zip(rows, call["labels"].tolist(), strict=True):
            ranked = [c for c in logits[i].argsort(descending=True).tolist() if c != int(y[i])]
            assert target == ranked[k]
        if previous is not None:  # each target on the survivors of the previous one
            assert set(rows) <= previous
        previous = {r for r, b in zip(rows, call["broken"].tolist(), strict=True) if not b}
        if k == 0:  # the first target on every correctly classified point
            assert sorted(rows) == (logits.argmax(dim=1) == y).nonzero().squeeze(1).tolist()


def test_an_eps_of_zero_is_the_clean_accuracy(digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = points
    ev = robustness(digits_cnn, x, y, eps=[0.1, 0.0], suite="quick", checks=False,
                    generator=torch.Generator().manual_seed(0))
    assert ev.eps == [0.0, 0.1]
    assert torch.equal(ev.robust[0], ev.clean_correct)
    assert all(s.eps == 0.1 for s in ev.stages)
    payload = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert payload["config"]["suite"]["attacks"][0]["params"] == {
        "steps": 20, "loss": "ce", "restarts": 1, "momentum": 0.75, "rho": 0.75, "early_stop": True}
    assert payload["config"]["norm"] == "linf" and payload["config"]["eps"] == [0.0, 0.1]
    assert "torch" in payload["config"]["versions"]


def test_bad_arguments_are_refused(digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = points
    with pytest.raises(ValueError, match=r"unknown suite 'nope'; valid suites: .*full.*quick.*standard"):
        robustness(digits_cnn, x, y, eps=0.1, suite="nope", checks=False)
    with pytest.raises(ValueError, match="supports norms linf, l2; got 'l1'"):
        robustness(digits_cnn, x, y, eps=0.1, norm="l1", suite="quick", checks=False)
    with pytest.raises(ValueError, match="duplicate"):
        robustness(digits_cnn, x, y, eps=[0.1, 0.1], suite="quick", checks=False)
    with pytest.raises(ValueError, match=r"unknown adaptive option 'magic'; valid options: bpda, eot, dlr"):
        robustness(digits_cnn, x, y, eps=0.1, suite="quick", checks=False, adaptive="magic")
    with pytest.raises(ValueError, match=r"adaptive='bpda' needs an advlab\.defenses\.Defended"):
        robustness(digits_cnn, x, y, eps=0.1, suite="quick", checks=False, adaptive="bpda")
    with pytest.raises(ValueError):
        robustness(digits_cnn, x, y, eps=-0.1, suite="quick", checks=False)
    with pytest.raises(ValueError):
        robustness(digits_cnn, x * 3, y, eps=0.1, suite="quick", checks=False)


def test_adaptive_options_change_what_is_attacked(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from advlab.defenses import Defended, Quantize

    x, y = points
    x, y = x[:16], y[:16]
    one = Suite("one", (SuiteAttack("apgd", {"steps": 10}, name="apgd-ce"),))
    ev = robustness(digits_cnn, x, y, eps=0.1, suite=one, checks=False, adaptive=["dlr", "eot"],
                    generator=torch.Generator().manual_seed(0))
    assert ev.config["adaptive"] == ["dlr", "eot"] and ev.config["eot_samples"] == 20
    assert ev.config["stages_run"][0]["params"]["loss"] == "dlr"
    assert ev.config["suite"]["attacks"][0]["params"]["loss"] == "ce"  # the suite itself as defined
    # a quantising defense masks the gradient (zero almost everywhere); BPDA attacks through it
    defended = Defended(Quantize(2), digits_cnn)
    with pytest.warns(RobustnessWarning, match="gradient is exactly zero"):
        naive = robustness(defended, x, y, eps=0.3, suite=one, checks=False,
                           generator=torch.Generator().manual_seed(0))
    adaptive = robustness(defended, x, y, eps=0.3, suite=one, checks=False, adaptive="bpda",
                          generator=torch.Generator().manual_seed(0))
    assert adaptive.robust_accuracy[0] < naive.robust_accuracy[0]
    assert adaptive.config["adaptive"] == ["bpda"]


# ------------------------------------------------------------------------------------------ merge_found


def _merge_fixture(digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]) -> Evaluation:
    x, y = points
    one = Suite("weak", (SuiteAttack("fgsm", name="fgsm"),))
    return robustness(digits_cnn, x, y, eps=[0.02, 0.12, 0.5], suite=one, checks=False,
                      generator=torch.Generator().manual_seed(0))


def test_merge_found_breaks_points_at_that_budget_and_every_larger_one(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ev = _merge_fixture(digits_cnn, points)
    # adversarial examples at the largest budget (strong PGD), handed in as if found at the middle budget:
    # only those inside the middle ball may count
    robust_mid = ev.robust[1].nonzero().squeeze(1)
    strong = apgd(digits_cnn, ev.x[robust_mid], ev.y[robust_mid], eps=0.12, steps=50,
                  generator=torch.Generator().manual_seed(3))
    hit = strong.success[0]
    assert int(hit.sum()) >= 2
    good_idx, good_adv = robust_mid[hit], strong.x_adv[0][hit]
    bad_idx = robust_mid[~hit][:1]  # the clean input: not adversarial, refused
    far_idx = good_idx[:1]
    far_adv = (ev.x[far_idx] + 0.3).clamp(0, 1)  # outside the ball, refused
    before = ev.robust.clone()
    found = Found("pgd (self-check)", 1, torch.cat([good_idx, bad_idx]), torch.cat([good_adv, ev.x[bad_idx]]),
                  torch.zeros(good_idx.numel() + 1))
    outside = Found("far (self-check)", 1, far_idx, far_adv, torch.zeros(1))
    # the far one first: refused, so the good one still counts
    changed = merge_found(ev, [outside, found], digits_cnn)
    assert ev.attack_names == ["fgsm", "pgd (self-check)"]  # "far" broke nothing: not listed
    code = 1
    for j in (1, 2):
        newly = before[j] & ~ev.robust[j]
        assert set(newly.nonzero().squeeze(1).tolist()) == set(good_idx[before[j][good_idx]].tolist())
        assert bool((ev.broken_by[j][newly] == code).all())
        assert torch.equal(ev.x_adv[j][newly], good_adv[before[j][good_idx]])
        if j == 1:
            assert bool(newly.any())
        if newly.any():
            dist = LpBall("linf", 0.0).distance(ev.x[newly], ev.x_adv[j][newly])
            assert torch.allclose(ev.distances[j][newly], dist) and bool((dist <= 0.12 + 1e-6).all())
    assert torch.equal(ev.robust[0], before[0])  # a smaller budget is not touched
    assert bool(ev.robust[1][bad_idx].all())
    assert changed == int((before & ~ev.robust).sum())
    # points already broken (or misclassified) are left as they are; merging again changes nothing
    assert merge_found(ev, found, digits_cnn) == 0
    acc = ev.robust_accuracy
    assert all(a >= b for a, b in itertools.pairwise(acc))


def test_merge_found_refuses_malformed_found(digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]) -> None:
    ev = _merge_fixture(digits_cnn, points)
    with pytest.raises(ValueError, match="eps_index 3 is out of range"):
        merge_found(ev, Found("x", 3, torch.tensor([0]), ev.x[:1], torch.zeros(1)), digits_cnn)
    with pytest.raises(ValueError, match="point indices"):
        merge_found(ev, Found("x", 0, torch.tensor([99]), ev.x[:1], torch.zeros(1)), digits_cnn)
    with pytest.raises(ValueError, match="x_adv has shape"):
        merge_found(ev, Found("x", 0, torch.tensor([0, 1]), ev.x[:1], torch.zeros(2)), digits_cnn)


# ------------------------------------------------------------------------------------------ suites


def test_builtin_suites() -> None:
    assert {"standard", "quick", "full"} <= set(list_suites())
    standard = get_suite("standard")
    assert [a.name for a in standard.attacks] == ["apgd-ce", "apgd-t", "square"]
    assert standard.norms == ("linf", "l2")
    apgd_t = standard.attacks[1]
    assert apgd_t.targets == "top" and apgd_t.top_k == 3 and apgd_t.params["loss"] == "dlr"
    assert all(a.full_params().get("early_stop", True) for a in standard.attacks)
    assert get_suite("full").attacks[2].top_k == 9
    assert get_suite("full").attacks[-1].params["max_queries"] == 5000
    with pytest.raises(ValueError, match=r"unknown suite 'nope'; valid suites: .*full, quick, standard"):
        get_suite("nope")


def test_suite_attacks_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown attack 'nope'; valid attacks: " + ", ".join(list_attacks())):
        SuiteAttack("nope")
    with pytest.raises(ValueError, match="attack 'apgd' has no parameter 'stepz'; it takes steps, loss"):
        SuiteAttack("apgd", {"stepz": 3})
    with pytest.raises(ValueError, match="'eps' is set by the evaluation"):
        SuiteAttack("apgd", {"eps": 3})
    with pytest.raises(ValueError, match="steps"):
        SuiteAttack("apgd", {"steps": 0})
    with pytest.raises(ValueError, match="no targeted mode"):
        SuiteAttack("deepfool", targets="top")
    with pytest.raises(ValueError, match="top_k=3 needs targets='top'"):
        SuiteAttack("apgd", top_k=3)
    with pytest.raises(ValueError, match="does not support norm 'l2'"):
        Suite("s", (SuiteAttack("fgsm"),), norms=("linf", "l2"))
    assert Suite("s", (SuiteAttack("fgsm"), SuiteAttack("apgd"))).norms == ("linf",)
    with pytest.raises(ValueError, match="share no norm"):
        Suite("s", (SuiteAttack("fgsm"), SuiteAttack("cw")))
    with pytest.raises(ValueError, match="unique"):
        Suite("s", (SuiteAttack("fgsm"), SuiteAttack("fgsm")), norms=("linf",))
    suite = register_suite(Suite("test-registered", (SuiteAttack("fgsm"),), norms=("linf",)), replace=True)
    assert get_suite("test-registered") is suite
    with pytest.raises(ValueError, match="already registered"):
        register_suite(suite)


def test_the_example_suite_file_loads_and_runs(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor]
) -> None:
    suite = load_suite(EXAMPLE)
    assert suite.name == "pgd-and-square" and suite.norms == ("linf", "l2")
    assert [(a.name, a.attack, a.targets, a.top_k) for a in suite.attacks] == [
        ("pgd-40", "pgd", None, 1), ("pgd-t", "pgd", "top", 2), ("square-500", "square", None, 1)]
    assert suite.attacks[2].params == {"max_queries": 500, "p_init": 0.3}
    x, y = points
    ev = robustness(digits_cnn, x[:16], y[:16], eps=[0.1], suite=str(EXAMPLE), checks=False,
                    generator=torch.Generator().manual_seed(0))
    assert ev.suite == "pgd-and-square" and ev.attack_names == ["pgd-40", "pgd-t", "square-500"]
    assert ev.config["suite"]["attacks"][0]["params"]["early_stop"] is True


BAD_FILES = [
    ("unknown-attack", '[[attacks]]\nattack = "pgd"\n\n[[attacks]]\nattack = "nope"\n', 5,
     ["attacks[1].attack", "unknown attack 'nope'", "valid attacks: apgd, bim"]),
    ("unknown-param", 'name = "s"\n[[attacks]]\nattack = "apgd"\nparams = { steps = 5, stepz = 3 }\n', 4,
     ["attacks[0].params.stepz", "apgd takes steps, loss, restarts"]),
    ("bad-value", '[[attacks]]\nattack = "apgd"\n[attacks.params]\nsteps = 0\n', 4, ["attacks[0].params.steps"]),
    ("unknown-field", '[[attacks]]\nattack = "apgd"\nstepz = 3\n', 3, ["attacks[0].stepz", "unknown field"]),
    ("top-field", 'nmae = "x"\n[[attacks]]\nattack = "apgd"\n', 1, ["nmae", "unknown field"]),
    ("bad-targets", '[[attacks]]\nattack = "apgd"\ntargets = "all"\n', 3, ["attacks[0].targets", "'top'"]),
    ("bad-norm", 'norms = ["l0"]\n[[attacks]]\nattack = "apgd"\n', 1, ["norms", "l0"]),
    ("no-attacks", 'name = "s"\n', None, ["attacks", "at least one"]),
    ("not-toml", 'name = \n', 1, ["not valid TOML"]),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_suite_files_name_the_file_line_and_field(tmp_path: Path, case: tuple[Any, ...]) -> None:
    _, text, line, needles = case
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    if line is not None:
        assert f"line {line}" in message, message
    for needle in needles:
        assert needle in message, message
    with pytest.raises(FileNotFoundError, match="not found"):
        load_suite(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------------------ APGD early stop


@pytest.mark.parametrize("restarts", [1, 2])
def test_apgd_early_stop_same_successes_fewer_passes(
    digits_cnn: nn.Module, points: tuple[torch.Tensor, torch.Tensor], restarts: int
) -> None:
    x, y = points
    kw: dict[str, Any] = {"eps": [0.05, 0.1], "steps": 20, "restarts": restarts, "loss": "dlr"}
    full = apgd(digits_cnn, x, y, generator=torch.Generator().manual_seed(0), **kw)
    early = apgd(digits_cnn, x, y, early_stop=True, generator=torch.Generator().manual_seed(0), **kw)
    assert 0 < int(full.success.sum()) < full.success.numel()
    assert torch.equal(early.success, full.success)
    assert torch.equal(early.x_adv[full.success], full.x_adv[full.success])  # the same (first) iterate
    assert early.n_backward < full.n_backward and early.n_forward < full.n_forward
    assert early.config["early_stop"] is True and full.config["early_stop"] is False


def test_derived_seeds_are_independent_of_the_stage_order() -> None:
    base = _base_seed(torch.Generator().manual_seed(0))
    assert base == _base_seed(torch.Generator().manual_seed(0))
    seeds = {_derive(base, f"stage:{e}:{s}:{k}") for e in range(3) for s in range(3) for k in range(3)}
    assert len(seeds) == 27 and all(0 <= v < 2**62 for v in seeds)
