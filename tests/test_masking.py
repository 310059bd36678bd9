"""Masked gradients end to end: the self-checks fire on a model whose gradients are masked, and the adaptive
option they suggest lets the evaluation break it anyway (a non-differentiable input quantiser: BPDA; a
saturated softmax: the scale-invariant DLR loss)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.attacks import RobustnessWarning
from advlab.defenses import Defended, Quantize
from advlab.evaluate import Evaluation, Suite, SuiteAttack, robustness

EPS = [0.1, 0.2]
# A gradient-only suite, so that masking shows: APGD with the cross-entropy loss.
GRADIENT_ONLY = Suite("apgd-ce", (SuiteAttack("apgd", {"steps": 20}, name="apgd-ce"),))


class Saturated(nn.Module):
    """The model's logits times 1000: the softmax saturates in float32 and cross-entropy gradients vanish."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.bounds = model, (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * 1000.0


@pytest.fixture(scope="module")
def points() -> tuple[Tensor, Tensor]:
    x, y = advlab.load_dataset("digits", "test")
    return x[:60], y[:60]


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, adaptive: str | None = None) -> Evaluation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        return robustness(model, x, y, eps=EPS, suite=GRADIENT_ONLY, adaptive=adaptive,
                          generator=torch.Generator().manual_seed(0))


def _fired(ev: Evaluation) -> dict[str, str | None]:
    return {c.name: c.adaptive for c in ev.warnings}


@pytest.mark.parametrize("kind", ["quantiser", "saturated"])
def test_checks_fire_and_the_suggested_adaptive_option_breaks_the_model(
    digits_cnn: nn.Module, points: tuple[Tensor, Tensor], one_thread: None, kind: str
) -> None:
    x, y = points
    masked = Defended(Quantize(4), digits_cnn) if kind == "quantiser" else Saturated(digits_cnn)
    expected = "bpda" if kind == "quantiser" else "dlr"
    reference = _evaluate(digits_cnn, x, y, adaptive=None).robust_accuracy  # the same network, unmasked

    naive = _evaluate(masked, x, y)
    fired = _fired(naive)
    assert fired.get("gradients") == expected, naive.checks
    # the suite fails against the masked model: clearly more robust than the same network without the mask
    assert naive.robust_accuracy[-1] >= reference[-1] + 0.2

    adaptive = _evaluate(masked, x, y, adaptive=expected)
    assert "gradients" not in _fired(adaptive)
    # with the suggested option the evaluation breaks it: no more robust than the unmasked network (+ slack
    # for the quantiser, which changes the decision function a little)
    assert adaptive.robust_accuracy[-1] <= reference[-1] + 0.1
    assert adaptive.robust_accuracy[-1] < naive.robust_accuracy[-1]
    for e, eps in enumerate(adaptive.eps):
        broken = ~adaptive.robust[e] & adaptive.clean_correct
        delta = (adaptive.x_adv[e][broken] - x[broken]).flatten(1).abs().amax(1)
        assert bool((delta <= eps + 1e-6).all())
        with torch.no_grad():
            assert bool((masked(adaptive.x_adv[e][broken]).argmax(1) != y[broken]).all())
