"""Gradient attacks: closed forms on linear models, and behaviour on a small CNN trained on real MNIST."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks import AttackContext, bim, bim_schedule, fgm, fgsm, illc, mifgsm, pgd, rfgsm
from advlab.models.classifier import Classifier
from advlab.threat import lp_norm, random_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_model(num_classes: int, dim: int = 16, bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0,
                 normalize: bool = False) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """Softmax regression ``z = W x + b`` on ``(1, 4, dim/4)`` inputs, float64; returns the model, W and b."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, num_classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64))
        lin.bias.copy_(torch.randn(num_classes, generator=gen, dtype=torch.float64))
    mean, std = ([0.3], [0.7]) if normalize else (None, None)
    model = Classifier(nn.Sequential(nn.Flatten(), lin), bounds=bounds, mean=mean, std=std).double()
    return model, lin.weight.detach().clone(), lin.bias.detach().clone()


def small_cnn(seed: int = 0) -> Classifier:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return Classifier(net)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("normalize", [False, True])
def test_fgsm_on_softmax_regression_equals_its_closed_form(normalize: bool) -> None:
    model, w, b = linear_model(5, normalize=normalize)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (64,), generator=gen)
    eps = [0.05, 0.2]
    result = fgsm(model, x, y, eps=eps)
    xn = (x.flatten(1) - 0.3) / 0.7 if normalize else x.flatten(1)
    p = torch.softmax(xn @ w.T + b, dim=1)
    grad = (p - F.one_hot(y, 5).double()) @ w  # d CE / d x (normalisation only rescales by 1/std > 0)
    for i, e in enumerate(eps):
        expected = (x.flatten(1) + e * grad.sign()).clamp(0, 1).view_as(x)
        torch.testing.assert_close(result.x_adv[i], expected, rtol=0, atol=1e-12)
    # targeted: a step down the target's loss
    t = random_targets(y, 5, gen)
    targeted = fgsm(model, x, t, eps=0.1, targeted=True)
    grad_t = (p - F.one_hot(t, 5).double()) @ w
    torch.testing.assert_close(targeted.x_adv[0], (x.flatten(1) - 0.1 * grad_t.sign()).clamp(0, 1).view_as(x),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("targeted", [False, True])
def test_bim_with_one_step_is_fgsm(targeted: bool) -> None:
    model = small_cnn()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(32, 1, 6, 6, generator=gen)
    y = torch.randint(0, 5, (32,), generator=gen)
    if targeted:
        y = random_targets(y, 5, gen)
    for e in (0.03, 0.1):
        one = bim(model, x, y, eps=e, steps=1, step_size=e, targeted=targeted)
        ref = fgsm(model, x, y, eps=e, targeted=targeted)
        assert torch.equal(one.x_adv, ref.x_adv)
        assert torch.equal(one.success, ref.success)


def test_mifgsm_without_momentum_is_bim() -> None:
    model = small_cnn(3)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 1, 6, 6, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    a = mifgsm(model, x, y, eps=0.1, steps=4, decay=0.0)
    b = bim(model, x, y, eps=0.1, steps=4, step_size=0.1 / 4)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-6)


def test_rfgsm_with_zero_alpha_is_fgsm_and_uses_its_random_step() -> None:
    model = small_cnn(4)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(16, 1, 6, 6, generator=gen) * 0.5 + 0.25, torch.randint(0, 5, (16,), generator=gen)
    torch.testing.assert_close(rfgsm(model, x, y, eps=0.1, random_step=0.0).x_adv, fgsm(model, x, y, eps=0.1).x_adv)
    r = rfgsm(model, x, y, eps=0.1, random_step=0.1, generator=torch.Generator().manual_seed(0))
    # with alpha = eps only the random sign step is left: every coordinate moved by exactly eps
    torch.testing.assert_close((r.x_adv[0] - x).abs(), torch.full_like(x, 0.1))


def test_bim_schedule_follows_the_paper() -> None:
    # Kurakin et al.: alpha = 1 and min(eps + 4, 1.25 eps) iterations on the 0-255 scale
    assert bim_schedule(16 / 255, (0.0, 1.0), "linf") == (20, pytest.approx(1 / 255))
    assert bim_schedule(8 / 255, (0.0, 1.0), "linf") == (10, pytest.approx(1 / 255))
    assert bim_schedule(2 / 255, (0.0, 1.0), "linf") == (3, pytest.approx(1 / 255))
    assert bim_schedule(64 / 255, (0.0, 1.0), "linf") == (68, pytest.approx(1 / 255))
    assert bim_schedule(32 / 255 * 2, (-1.0, 1.0), "linf") == (36, pytest.approx(2 / 255))  # range 2: eps=32
    assert bim_schedule(1e-4, (0.0, 1.0), "linf")[0] == 1
    assert bim_schedule(2.0, (0.0, 1.0), "l2") == (10, pytest.approx(0.25))  # 1.25 eps over 10 steps


def binary_direction(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """For two classes, the CE gradient in x is a positive multiple of ``w_other - w_y``."""
    return (w[1 - y] - w[y]).view(-1, 1, 4, 4)


@pytest.mark.parametrize("random_start", [False, True])
def test_l2_pgd_on_a_linear_model_reaches_the_optimum(random_start: bool) -> None:
    model, w, _ = linear_model(2, bounds=(-50.0, 50.0), seed=5)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(40, 1, 4, 4, generator=gen, dtype=torch.float64) - 0.5
    y = torch.randint(0, 2, (40,), generator=gen)
    eps = 1.5
    r = pgd(model, x, y, eps=eps, norm="l2", steps=60, step_size=eps / 2, random_start=random_start,
            generator=torch.Generator().manual_seed(0))
    d = binary_direction(w, y)
    optimum = eps * d / lp_norm(d, "l2").view(-1, 1, 1, 1)  # argmax of the loss over the L2 ball
    torch.testing.assert_close(r.distances[0], torch.full((40,), eps, dtype=torch.float64))
    torch.testing.assert_close(r.x_adv[0] - x, optimum, rtol=0, atol=1e-6)


def test_linf_pgd_and_bim_on_a_linear_model_reach_the_corner() -> None:
    model, w, _ = linear_model(2, bounds=(-50.0, 50.0), seed=6)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(40, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=gen)
    optimum = 0.3 * binary_direction(w, y).sign()
    r = pgd(model, x, y, eps=0.3, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.x_adv[0] - x, optimum, rtol=0, atol=1e-12)
    r = bim(model, x, y, eps=0.3, steps=8, step_size=0.05)
    torch.testing.assert_close(r.x_adv[0] - x, optimum, rtol=0, atol=1e-12)


def test_l1_pgd_on_a_linear_model_moves_the_largest_weights() -> None:
    model, w, _ = linear_model(2, bounds=(-50.0, 50.0), seed=7)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1])
    r = pgd(model, x, y, eps=2.0, norm="l1", steps=20, random_start=False, l1_sparsity=0.9)
    delta = r.x_adv[0].flatten(1)
    d = binary_direction(w, y).flatten(1)
    top = d.abs().topk(2, dim=1).indices  # round(0.1 * 16) = 2 coordinates move per step
    for i in range(2):
        assert float(lp_norm(delta[i : i + 1], "l1")) == pytest.approx(2.0)
        assert set(delta[i].nonzero().flatten().tolist()) <= set(top[i].tolist())
        assert bool((delta[i] * d[i] >= 0).all())


def test_cost_accounting() -> None:
    model = small_cnn()
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 5
    r = pgd(model, x, y, eps=[0.1, 0.2], steps=7)
    assert (r.n_forward, r.n_backward) == (8 * (1 + 2 * 7 + 2), 8 * 2 * 7)  # clean, steps, re-checks
    # BIM's first step is taken at the clean input: its forward pass gives the clean logits too.
    r = bim(model, x, y, eps=0.1, steps=3)
    assert (r.n_forward, r.n_backward) == (8 * (3 + 1), 8 * 3)  # steps, re-check
    r = illc(model, x, y, eps=0.1, steps=3)
    assert (r.n_forward, r.n_backward) == (8 * 5, 8 * 3)  # plus one forward for the least-likely classes
    # Budgets of one call share the gradient at the clean input.
    r = fgsm(model, x, y, eps=[0.1, 0.2])
    assert (r.n_forward, r.n_backward) == (8 * (1 + 2), 8)  # one gradient, two re-checks
    r = bim(model, x, y, eps=[0.1, 0.2], steps=3)
    assert (r.n_forward, r.n_backward) == (8 * (1 + 2 * 2 + 2), 8 * (1 + 2 * 2))
    r = rfgsm(model, x, y, eps=0.1)
    assert (r.n_forward, r.n_backward) == (8 * 3, 8)


def test_context_takes_the_clean_logits_from_an_evaluation_at_the_clean_input() -> None:
    model = small_cnn()
    x = torch.rand(8, 1, 6, 6)
    ctx = AttackContext(model, (0.0, 1.0), None, False)
    seen: list[torch.Tensor] = []
    ctx.begin_chunk(x, seen.append, None)
    assert ctx.num_classes == 5 and ctx.n_forward == 1  # unknown yet: a one-example probe
    ctx.logits((x + 0.1).clamp(0, 1))  # another input: not taken
    assert not seen
    z = ctx.logits(x.clone())  # the same values: validated and taken
    assert len(seen) == 1 and torch.equal(seen[0], z)
    assert torch.equal(ctx.clean_logits(), z) and ctx.n_forward == 1 + 8 + 8  # nothing run again
    ctx.begin_chunk(x[:4], seen.append, None)  # a new chunk forgets the old clean logits
    ctx.clean_logits()
    assert ctx.n_forward == 17 + 4 and len(seen) == 2


def test_shared_first_gradient_changes_no_result() -> None:
    model = small_cnn()
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 5
    for attack, kwargs in ((fgsm, {}), (bim, {"steps": 3}), (mifgsm, {"steps": 3})):
        both = attack(model, x, y, eps=[0.05, 0.2], **kwargs)
        for i, e in enumerate((0.05, 0.2)):
            one = attack(model, x, y, eps=e, **kwargs)
            assert torch.equal(both.x_adv[i], one.x_adv[0]), attack.__name__
            assert torch.equal(both.success[i], one.success[0]), attack.__name__


def test_illc_targets_the_least_likely_class() -> None:
    model = small_cnn(8)
    gen = torch.Generator().manual_seed(8)
    x, y = torch.rand(30, 1, 6, 6, generator=gen), torch.randint(0, 5, (30,), generator=gen)
    r = illc(model, x, y, eps=0.2, steps=10, step_size=0.05)
    with torch.no_grad():
        logits = model(x)
    expected = logits.scatter(1, y[:, None], float("inf")).argmin(dim=1)
    assert torch.equal(r.labels, expected)
    assert r.targeted and r.config["targets"].startswith("least-likely")
    assert torch.equal(r.clean_correct, logits.argmax(1) == y)
    assert torch.equal(r.success[0], model(r.x_adv[0]).argmax(1) == expected)


# ---------------------------------------------------------------- a small CNN trained on MNIST


@pytest.fixture(scope="module")
def mnist_200(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_test
    return x[:200], y[:200]


def seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def test_pgd_and_bim_beat_fgsm_on_mnist(mnist_cnn: nn.Module, mnist_200: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_200
    eps = [0.1, 0.2]
    single = fgsm(mnist_cnn, x, y, eps=eps).robust_accuracy
    assert float(single[0]) > 0.5  # the model is accurate and FGSM at 0.1 breaks only some of it
    iterative = pgd(mnist_cnn, x, y, eps=eps, steps=10, generator=seed()).robust_accuracy
    assert bool((iterative < single).all()), (iterative, single)
    assert float(iterative[1]) < 0.25
    # BIM with the paper's schedule (alpha = 1/255, 30 steps at eps = 0.1)
    assert float(bim(mnist_cnn, x[:100], y[:100], eps=0.1).robust_accuracy[0]) < float(
        fgsm(mnist_cnn, x[:100], y[:100], eps=0.1).robust_accuracy[0]
    )


@pytest.mark.parametrize(
    ("attack", "kwargs"),
    [
        (pgd, {"steps": 10}),
        (pgd, {"steps": 20, "loss": "dlr"}),  # targeted DLR at 10 steps: 89-91 %, too close to the bar
        (bim, {"steps": 10, "step_size": 0.05}),
        (mifgsm, {"steps": 10, "step_size": 0.05}),
    ],
    ids=["pgd", "pgd-dlr", "bim", "mifgsm"],
)
def test_targeted_attacks_reach_random_targets(
    mnist_cnn: nn.Module, mnist_200: tuple[torch.Tensor, torch.Tensor], attack: Any, kwargs: dict[str, Any]
) -> None:
    x, y = mnist_200[0][:100], mnist_200[1][:100]
    targets = random_targets(y, 10, seed(1))
    r = attack(mnist_cnn, x, targets, eps=0.3, targeted=True, true_labels=y, generator=seed(), **kwargs)
    assert float(r.success_rate[0]) >= 0.9
    assert torch.equal(r.success[0], mnist_cnn(r.x_adv[0]).argmax(1) == targets)


def test_illc_hits_the_least_likely_class_on_mnist(
    mnist_cnn: nn.Module, mnist_200: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_200[0][:100], mnist_200[1][:100]
    r = illc(mnist_cnn, x, y, eps=0.3, steps=10, step_size=0.05)
    assert float(r.success_rate[0]) >= 0.8
    assert float(r.clean_correct.float().mean()) > 0.9
    with torch.no_grad():
        probs = torch.softmax(mnist_cnn(x), dim=1)
    torch.testing.assert_close(probs.gather(1, r.labels[:, None]).squeeze(1), probs.min(dim=1).values)


def test_restarts_never_hurt(mnist_cnn: nn.Module, mnist_200: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_200[0][:100], mnist_200[1][:100]
    one = pgd(mnist_cnn, x, y, eps=0.12, steps=5, generator=seed(3))
    four = pgd(mnist_cnn, x, y, eps=0.12, steps=5, restarts=4, generator=seed(3))
    assert float(four.robust_accuracy[0]) <= float(one.robust_accuracy[0])
    assert float((one.success & ~four.success).float().mean()) <= 0.02  # restart 0 is the single run
    assert four.n_forward > one.n_forward  # the failures were attacked again


def test_l2_and_l1_pgd_on_mnist(mnist_cnn: nn.Module, mnist_200: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_200[0][:100], mnist_200[1][:100]
    l2 = pgd(mnist_cnn, x, y, eps=[1.0, 2.0], norm="l2", steps=10, generator=seed())
    assert float(l2.robust_accuracy[1]) < 0.4 and float(l2.robust_accuracy[1]) < float(l2.robust_accuracy[0])
    assert float(l2.robust_accuracy[1]) < float(fgm(mnist_cnn, x, y, eps=2.0, norm="l2").robust_accuracy[0])
    l1 = pgd(mnist_cnn, x, y, eps=[5.0, 15.0], norm="l1", steps=10, generator=seed())
    assert float(l1.robust_accuracy[1]) < 0.35 and float(l1.robust_accuracy[1]) < float(l1.robust_accuracy[0])
    assert bool((l1.distances[1] <= 15.0 * (1 + 1e-5)).all())


@pytest.mark.parametrize(("attack", "kwargs"), [
    (pgd, {"norm": "linf"}), (pgd, {"norm": "l2"}), (pgd, {"norm": "l1"}), (pgd, {"norm": "linf", "restarts": 3}),
    (bim, {"norm": "linf"}), (bim, {"norm": "l2", "targeted": True}),
    (mifgsm, {"norm": "linf"}), (mifgsm, {"norm": "l2"}),
])
def test_early_stop_keeps_every_success_for_fewer_passes(attack: Any, kwargs: dict[str, Any]) -> None:
    model = small_cnn()
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 5
    if kwargs.get("targeted"):
        y = (y + 1) % 5
    eps = [0.3, 1.0] if kwargs["norm"] == "linf" else [1.0, 3.0]
    run = {"steps": 8, **kwargs}
    if attack is pgd:
        run["generator"] = torch.Generator().manual_seed(2)
    full = attack(model, x, y, eps=eps, **run)
    if attack is pgd:
        run["generator"] = torch.Generator().manual_seed(2)
    quick = attack(model, x, y, eps=eps, early_stop=True, **run)
    assert torch.equal(quick.success, full.success)
    assert bool(quick.success.any()) and quick.n_backward < full.n_backward
    assert quick.config["early_stop"] is True
    if attack is not pgd:  # deterministic: chunks stop on their own, so the result does not depend on the batch
        chunked = attack(model, x, y, eps=eps, early_stop=True, batch_size=5, **run)
        torch.testing.assert_close(chunked.x_adv, quick.x_adv, rtol=0, atol=1e-5)


def test_early_stop_returns_the_first_adversarial_iterate() -> None:
    model = small_cnn()
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 5
    many = bim(model, x, y, eps=0.5, steps=8, step_size=0.05, early_stop=True)
    for k in range(2, 9):  # an example that first succeeds at step k is returned as BIM's k-th iterate
        prefix = bim(model, x, y, eps=0.5, steps=k, step_size=0.05)
        first = prefix.success[0] & ~bim(model, x, y, eps=0.5, steps=k - 1, step_size=0.05).success[0]
        if bool(first.any()):
            torch.testing.assert_close(many.x_adv[0][first], prefix.x_adv[0][first])
