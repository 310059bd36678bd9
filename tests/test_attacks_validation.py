"""Every registered attack rejects bad input with a clear error that names the problem."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from advlab.attacks import attack_spec, bim, get_attack, illc, list_attacks, mifgsm, pgd, rfgsm
from advlab.models.classifier import Classifier
from advlab.threat import NORMS

NUM_CLASSES = 4


def tiny_model(softmax: bool = False) -> Classifier:
    gen = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, NUM_CLASSES)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return Classifier(net)


def inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=gen), torch.arange(n) % NUM_CLASSES


def with_field(field: str) -> list[str]:
    """The registered attacks whose config has ``field``."""
    return [n for n in list_attacks() if field in attack_spec(n).defaults()]


def fast(name: str) -> dict[str, Any]:
    return {"steps": 2} if "steps" in attack_spec(name).defaults() else {}


pytestmark = pytest.mark.usefixtures("one_thread")
TAKE_TARGETS = [n for n in list_attacks() if attack_spec(n).targeted]
PARTIAL_NORMS = [n for n in list_attacks() if set(attack_spec(n).norms) != set(NORMS)]


@pytest.fixture(params=list_attacks())
def name(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def call(name: str, model: Any, x: Any, y: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("eps", 0.1)
    kwargs.setdefault("norm", attack_spec(name).norms[0])
    return get_attack(name)(model, x, y, **{**fast(name), **kwargs})


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(name: str, bad: float) -> None:
    x, y = inputs()
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        call(name, tiny_model(), x, y)


@pytest.mark.parametrize("value", [-0.01, 1.5])
def test_out_of_bounds_inputs(name: str, value: float) -> None:
    x, y = inputs()
    x[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"bounds.*raw"):
        call(name, tiny_model(), x, y)


def test_empty_batch(name: str) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        call(name, tiny_model(), torch.zeros(0, 1, 6, 6), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("x", [[[0.5] * 36], None, "images"])
def test_non_tensor_x(name: str, x: Any) -> None:
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        call(name, tiny_model(), x, torch.zeros(1, dtype=torch.long))


def test_integer_x(name: str) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        call(name, tiny_model(), torch.zeros(2, 1, 6, 6, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("bad", [NUM_CLASSES, -1])
def test_labels_out_of_range(name: str, bad: int) -> None:
    x, y = inputs()
    y[1] = bad
    model = tiny_model()
    model.train()
    with pytest.raises(ValueError, match=rf"class indices in \[0, {NUM_CLASSES - 1}\]"):
        call(name, model, x, y)
    assert model.training  # restored even when the attack fails part-way


@pytest.mark.parametrize("shape", [(3, 1), (2,), (4,), ()])
def test_labels_of_wrong_shape(name: str, shape: tuple[int, ...]) -> None:
    x, _ = inputs(3)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        call(name, tiny_model(), x, torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_labels(name: str, dtype: torch.dtype) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match="integer class indices"):
        call(name, tiny_model(), x, y.to(dtype))


def test_labels_not_a_tensor(name: str) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match=r"y must be a torch\.Tensor"):
        call(name, tiny_model(), x, y.tolist())


@pytest.mark.parametrize("name", TAKE_TARGETS)
def test_target_equal_to_true_label(name: str) -> None:
    x, y = inputs()
    targets = (y + 1) % NUM_CLASSES
    targets[2] = y[2]
    with pytest.raises(ValueError, match=r"target of example 2 equals its true label"):
        call(name, tiny_model(), x, targets, targeted=True, true_labels=y)


@pytest.mark.parametrize("name", TAKE_TARGETS)
def test_true_labels_out_of_range(name: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"true_labels must be class indices"):
        call(name, tiny_model(), x, (y + 1) % NUM_CLASSES, targeted=True, true_labels=y + NUM_CLASSES)


# ---------------------------------------------------------------- budgets, norms, model, options


@pytest.mark.parametrize("eps", [-0.1, [0.1, -1e-3], math.nan, math.inf])
def test_bad_eps(name: str, eps: Any) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match="finite and non-negative"):
        call(name, tiny_model(), x, y, eps=eps)


def test_empty_eps_list(name: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match="eps is empty"):
        call(name, tiny_model(), x, y, eps=[])


@pytest.mark.parametrize("eps", ["0.1", None, True])
def test_eps_of_wrong_type(name: str, eps: Any) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match="eps"):
        call(name, tiny_model(), x, y, eps=eps)


@pytest.mark.parametrize("norm", ["l3", "L2", "inf", ""])
def test_unknown_norm(name: str, norm: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=rf"unknown norm '{norm}'; expected one of"):
        call(name, tiny_model(), x, y, norm=norm)


@pytest.mark.parametrize("name", PARTIAL_NORMS)
def test_unsupported_norm_names_the_supported_ones(name: str) -> None:
    spec = attack_spec(name)
    missing = [n for n in NORMS if n not in spec.norms]
    x, y = inputs()
    with pytest.raises(ValueError, match=rf"unknown norm '{missing[0]}'; expected one of {', '.join(spec.norms)}"):
        call(name, tiny_model(), x, y, norm=missing[0])


def test_model_returning_probabilities(name: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"probabilities.*logits"):
        call(name, tiny_model(softmax=True), x, y)


@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_bad_batch_size(name: str, batch_size: Any, error: type[Exception]) -> None:
    x, y = inputs()
    with pytest.raises(error, match="batch_size must be an integer"):
        call(name, tiny_model(), x, y, batch_size=batch_size)


def test_bad_generator(name: str) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        call(name, tiny_model(), x, y, generator=42)


@pytest.mark.parametrize("name", with_field("steps"))
@pytest.mark.parametrize(("steps", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_bad_steps(name: str, steps: Any, error: type[Exception]) -> None:
    x, y = inputs()
    with pytest.raises(error, match="steps must be an integer"):
        call(name, tiny_model(), x, y, steps=steps)


@pytest.mark.parametrize("name", with_field("step_size"))
@pytest.mark.parametrize("step_size", [0.0, -0.1, math.nan])
def test_bad_step_size(name: str, step_size: float) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match="step_size must be"):
        call(name, tiny_model(), x, y, step_size=step_size)


@pytest.mark.parametrize("name", with_field("loss"))
def test_unknown_loss(name: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; expected one of ce"):
        call(name, tiny_model(), x, y, loss="hinge")


# ---------------------------------------------------------------- attack-specific options


def test_pgd_options() -> None:
    x, y = inputs()
    model = tiny_model()
    with pytest.raises(ValueError, match="restarts must be an integer"):
        pgd(model, x, y, eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="random_start=True"):
        pgd(model, x, y, eps=0.1, restarts=3, random_start=False)
    with pytest.raises(ValueError, match=r"l1_sparsity must be < 1"):
        pgd(model, x, y, eps=1.0, norm="l1", l1_sparsity=1.0)
    with pytest.raises(TypeError, match="random_start must be True or False"):
        pgd(model, x, y, eps=0.1, random_start="yes")  # type: ignore[arg-type]


def test_bim_and_mifgsm_options() -> None:
    x, y = inputs()
    model = tiny_model()
    with pytest.raises(ValueError, match="decay must be >= 0"):
        mifgsm(model, x, y, eps=0.1, decay=-1.0)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        mifgsm(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="steps must be an integer"):
        bim(model, x, y, eps=0.1, steps=0)


@pytest.mark.parametrize("attack", [pgd, bim, illc, mifgsm])
def test_early_stop_must_be_a_bool(attack: Any) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match="early_stop must be True or False, got str"):
        attack(tiny_model(), x, y, eps=0.1, early_stop="yes")


def test_rfgsm_random_step_must_fit_in_the_ball() -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"random_step=0\.2 exceeds the budget eps=0\.1"):
        rfgsm(tiny_model(), x, y, eps=[0.0, 0.3, 0.1], random_step=0.2)
    with pytest.raises(ValueError, match="random_step must be >= 0"):
        rfgsm(tiny_model(), x, y, eps=0.3, random_step=-0.1)


def test_illc_chooses_its_own_targets() -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"illc chooses its own targets.*bim\(\.\.\., targeted=True\)"):
        illc(tiny_model(), x, y, eps=0.1, targeted=True)


def test_pgd_restarts_without_random_start_are_refused_from_two() -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match="random_start=True or restarts=1"):
        pgd(tiny_model(), x, y, eps=0.1, restarts=2, random_start=False)


@pytest.mark.parametrize(("classes", "targeted", "ok"), [(3, False, True), (2, False, False), (4, True, True),
                                                         (3, True, False)])
def test_dlr_needs_three_classes_or_four_when_targeted(classes: int, targeted: bool, ok: bool) -> None:
    from advlab.attacks import objective

    logits, labels = torch.randn(2, classes), torch.tensor([0, 1])
    if ok:
        assert objective("dlr", logits, labels, targeted).shape == (2,)
    else:
        with pytest.raises(ValueError, match=r"at least 3 classes \(4 when targeted\)"):
            objective("dlr", logits, labels, targeted)


def test_the_l1_step_skips_coordinates_stuck_at_a_bound() -> None:
    """PGD's L1 step passes the iterate, so coordinates at a bound that the gradient pushes out never move."""
    from advlab.attacks._iterative import steepest
    from advlab.threat import LpBall

    x_t = torch.tensor([[1.0, 1.0, 0.5, 0.2]])
    grad = torch.tensor([[5.0, 4.0, 1.0, -0.5]])  # the two largest push past the upper bound
    step = steepest(LpBall("l1", 1.0), 1.0, (0.0, 1.0), l1_sparsity=0.5)(grad, x_t)
    assert step[0, :2].tolist() == [0.0, 0.0] and float(step.abs().sum()) == pytest.approx(1.0)
