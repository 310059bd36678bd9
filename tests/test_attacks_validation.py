"""Every registered attack rejects bad input with a clear error that names the problem."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import advlab
from advlab.attacks import (
    RobustnessWarning,
    attack_spec,
    bim,
    fgsm,
    get_attack,
    illc,
    list_attacks,
    mifgsm,
    pgd,
    rfgsm,
)
from advlab.attacks._validation import check_logits, logits_doubts
from advlab.models.classifier import Classifier
from advlab.threat import NORMS
from test_attacks_nonneural import kind_model, model_kinds

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


def model_for(name: str) -> nn.Module:
    """``tiny_model()``, or for an attack on one kind of model (its registered ``models``) a scikit-learn model
    of that kind for the same inputs."""
    kinds = model_kinds(name)
    return kind_model(kinds[0], (1, 6, 6), NUM_CLASSES) if kinds else tiny_model()


def needs_any_model(name: str) -> None:
    """Skips tests that wrap the tiny network's outputs for attacks that need a model of their own kind."""
    if model_kinds(name):
        pytest.skip(f"{name} attacks {'/'.join(model_kinds(name))} models only, not a wrapped network")


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


class Outputs(nn.Module):
    """The tiny model's logits passed through ``transform`` (probabilities in disguise and the like)."""

    def __init__(self, transform: Any) -> None:
        super().__init__()
        self.inner = tiny_model()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.transform(self.inner(x))
        return out


def robustness_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, RobustnessWarning)]


@pytest.mark.parametrize("scale", [100.0, 0.5, 7.0])
def test_scaled_probabilities_are_refused(name: str, scale: float) -> None:
    x, y = inputs(4)
    model = Outputs(lambda z: scale * torch.softmax(z, dim=1))
    with pytest.raises(ValueError, match=r"scaled probabilities .*all sum to .*attacks need logits"):
        call(name, model, x, y)


def test_scaled_probabilities_are_refused_even_one_example_per_chunk() -> None:
    """Each chunk of one example cannot show a common row sum; the whole call can."""
    x, y = inputs(4)
    with pytest.raises(ValueError, match="scaled probabilities"):
        fgsm(Outputs(lambda z: 100 * torch.softmax(z, dim=1)), x, y, eps=0.1, batch_size=1)


def test_one_example_of_scaled_probabilities_is_doubted_not_refused() -> None:
    x, y = inputs(1)
    with pytest.warns(RobustnessWarning, match="non-negative with one row sum"):
        fgsm(Outputs(lambda z: 100 * torch.softmax(z, dim=1)), x, y, eps=0.1)


def test_log_probabilities_are_logits(name: str) -> None:
    """log-softmax outputs are logits up to a per-row constant: accepted without a doubt."""
    needs_any_model(name)
    x, y = inputs(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessWarning)
        result = call(name, Outputs(lambda z: torch.log_softmax(z, dim=1)), x, y)
    plain = call(name, tiny_model(), x, y)
    assert torch.equal(result.clean_pred, plain.clean_pred)


def test_sigmoid_outputs_warn_once_per_call(name: str) -> None:
    needs_any_model(name)
    x, y = inputs(6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        call(name, Outputs(torch.sigmoid), x, y, batch_size=2)
    doubts = [m for m in robustness_warnings(record) if "[0, 1]" in m]
    assert len(doubts) == 1, doubts
    assert "overstate robustness" in doubts[0] and doubts[0].startswith(f"{name}: ")


def test_the_warning_is_a_user_warning_that_can_be_made_an_error() -> None:
    assert issubclass(RobustnessWarning, UserWarning) and advlab.attacks.RobustnessWarning is RobustnessWarning
    x, y = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessWarning)
        with pytest.raises(RobustnessWarning):
            fgsm(Outputs(torch.sigmoid), x, y, eps=0.1)


def test_check_logits_and_doubts_directly() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 10, generator=gen) * 3
    check_logits(z, 5)
    assert logits_doubts(z) == []
    check_logits(torch.log_softmax(z, dim=1), 5)
    assert logits_doubts(torch.log_softmax(z, dim=1)) == []
    for probs in (torch.softmax(z, 1), 100 * torch.softmax(z, 1), torch.softmax(z, 1).double() * 3):
        with pytest.raises(ValueError, match="probabilities"):
            check_logits(probs, 5)
    # non-negative rows of different sums (e.g. a final ReLU): not refused
    relu = torch.relu(z) + 0.01
    check_logits(relu, 5)
    # identical rows of one sum cannot tell: a doubt, not a refusal
    same = (100 * torch.softmax(z[:1], 1)).expand(3, -1)
    check_logits(same, 3)
    assert any("non-negative" in d for d in logits_doubts(same))
    assert any("[0, 1]" in d for d in logits_doubts(torch.sigmoid(z)))


class Saturated(nn.Module):
    """Logits through a hard saturation: exactly zero input gradient wherever every logit saturates."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * torch.nn.functional.hardtanh(1e4 * self.inner(x))


@pytest.mark.parametrize("attack", [fgsm, pgd, bim])
def test_vanishing_gradients_warn(attack: Any) -> None:
    model = Saturated()
    x, _ = inputs(6)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified, so the attack must move every example
    with pytest.warns(RobustnessWarning, match=r"gradient is exactly zero at \d+ of \d+ inputs"):
        attack(model, x, y, eps=0.05, generator=torch.Generator().manual_seed(0))


def test_no_gradient_warning_for_a_healthy_model(name: str) -> None:
    x, y = inputs(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessWarning)
        call(name, model_for(name), x, y)


# ---------------------------------------------------------------- eps given as NumPy numbers


@pytest.mark.parametrize("eps", [np.float32(0.1), np.float64(0.1), [np.float32(0.1)], np.array([0.1])])
def test_numpy_eps_is_accepted(name: str, eps: Any) -> None:
    x, y = inputs()
    norm = attack_spec(name).norms[0]
    if norm == "l0":
        eps = np.int64(4) if np.ndim(eps) == 0 else [np.int64(4)]
    result = call(name, model_for(name), x, y, eps=eps, norm=norm)
    assert result.eps == ((4.0,) if norm == "l0" else (0.1,))


@pytest.mark.parametrize("eps", [np.bool_(True), np.array([True]), torch.tensor([True])])
def test_boolean_eps_of_numpy_or_torch_is_refused(name: str, eps: Any) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match="eps"):
        call(name, tiny_model(), x, y, eps=eps)


# ---------------------------------------------------------------- input layout and dtype


def recorded_model(in_shape: tuple[int, int, int]) -> Classifier:
    return advlab.create_model("mlp", in_shape=in_shape, num_classes=NUM_CLASSES, hidden=(8,),
                               generator=torch.Generator().manual_seed(0))


def test_inputs_without_a_channel_dimension(name: str) -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"model takes \(1, 6, 6\).*unsqueeze\(1\)"):
        call(name, recorded_model((1, 6, 6)), x[:, 0], y)


def test_channels_last_inputs(name: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(3, 6, 6, 3, generator=gen), torch.arange(3)
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        call(name, recorded_model((3, 6, 6)), x, y)


def test_flattened_inputs_name_the_reshape() -> None:
    x, y = inputs()
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 6, 6\).*reshape"):
        fgsm(recorded_model((1, 6, 6)), x.reshape(3, 36), y, eps=0.1)


def test_inputs_of_the_recorded_shape_run() -> None:
    x, y = inputs()
    assert fgsm(recorded_model((1, 6, 6)), x, y, eps=0.1).x_adv.shape == (1, 3, 1, 6, 6)


def test_dtype_mismatch_names_both_dtypes(name: str) -> None:
    x, y = inputs()
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the model's parameters are torch.float32"):
        call(name, tiny_model(), x.double(), y)


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
