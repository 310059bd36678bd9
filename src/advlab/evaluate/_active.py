"""The active test of an evaluation: the binarization test of Zimmermann et al.

Reference: Zimmermann, Brendel, Tramèr & Carlini, "Increasing Confidence in Adversarial Robustness
Evaluations", NeurIPS 2022.

For each of ``n`` correctly classified points ``x_i`` the model is turned into a binary classifier that
provably has an adversarial example inside the budget: the features of the model (the input of its last
``nn.Linear``, or its logits when it has none) are read by a linear readout fitted so that ``x_i`` and
random *inner* points of the ball (up to ``INNER_RADIUS * eps`` away) read class 0 and one *boundary* point
at the full budget reads class 1. An attack suite that cannot find class 1 inside the ball misses an
adversarial example that exists: its evaluation of the model is unreliable. All points are tested in one
model (:class:`Binarised`): an input is routed to the readout of its nearest anchor ``x_i`` (anchors lie
more than ``2 eps`` apart, so the routing is constant over every ball); the model returns four logits
``[r0, r1, m - PAD_MARGIN, m - 2 PAD_MARGIN]`` with ``m = min(r0, r1)``, so that DLR losses apply (they need
three classes, four when targeted) and targeted stages try class 1 first; the padding classes never win.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advlab._validate import check_batch, check_float, check_int, check_labels
from advlab.attacks import RobustnessWarning, attack_mode
from advlab.attacks._validation import model_bounds
from advlab.evaluate._evaluation import Check
from advlab.models.classifier import unchecked_inputs
from advlab.threat import check_norm, clip_to_bounds, lp_norm

# Inner points (class 0) per tested point, besides the point itself (the paper uses 999; fewer keep the
# test fast and already make the readout far from trivially separable in a few hundred features).
N_INNER = 99
# Inner points lie within this fraction of the budget (the paper's eta = 0.95).
INNER_RADIUS = 0.95
# The readout's decision threshold sits this far from the highest inner score towards the boundary point's
# score: 0 would be halfway-agnostic, values near 1 leave class 1 only a thin slice around the boundary
# point (the paper's "decision boundary closeness" of 0.999, relaxed for float noise across batch sizes).
CLOSENESS = 0.99
# The readout is scaled so that the tested point's class-1 logit margin is -ANCHOR_LOGIT.
ANCHOR_LOGIT = 3.0
# The two padding logits lie this far and twice as far below the lower of the two others (they never win).
PAD_MARGIN = 1.0
# Logistic-regression fit of the readout: Adam steps, learning rate and L2 penalty on the weights.
FIT_STEPS = 300
FIT_LR = 0.05
FIT_L2 = 1e-4
# Fresh draws of inner and boundary points for a point whose readout could not separate them.
RESAMPLE_ROUNDS = 3
# The boundary point must read class 1 with at least this logit margin (float noise never decides).
MIN_BOUNDARY_MARGIN = 1e-3
# Norms the test supports (those of the attack suites).
ACTIVE_NORMS = ("linf", "l2")

AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class ActiveTestResult:
    """The outcome of :func:`active_test`.

    Attributes:
        n_valid: points whose binarised model was built (a readout separating the inner points from the
            boundary point was found). n_passed: of those, the points where the suite found class 1 inside
            the ball. pass_rate: ``n_passed / n_valid`` (NaN when no point is valid).
        threshold: the pass rate needed for a reliable evaluation. reliable: ``pass_rate >= threshold``.
        statuses: per candidate point, ``"passed"``, ``"failed"`` or ``"invalid"``. indices: their indices
            into the ``x`` given.
        norm / eps / suite: the threat model and the suite tested. seconds: wall time.
        binarised: the binarised model (not serialised). anchors: ``(V, ...)`` the valid points; boundary:
            ``(V, ...)`` their boundary points, inside the ball and classified 1 by ``binarised``;
            x_adv: ``(V, ...)`` what the suite returned for each.
    """

    n_valid: int
    n_passed: int
    pass_rate: float
    threshold: float
    reliable: bool
    statuses: list[str]
    indices: list[int]
    norm: str
    eps: float
    suite: str
    seconds: float
    binarised: nn.Module | None = field(default=None, repr=False)
    anchors: Tensor | None = field(default=None, repr=False)
    boundary: Tensor | None = field(default=None, repr=False)
    x_adv: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict (NaN stays a float; see :func:`~advlab.evaluate.json_safe`)."""
        return {"n_valid": self.n_valid, "n_passed": self.n_passed, "pass_rate": self.pass_rate,
                "threshold": self.threshold, "reliable": self.reliable, "statuses": list(self.statuses),
                "indices": list(self.indices), "norm": self.norm, "eps": self.eps, "suite": self.suite,
                "seconds": self.seconds}

    def check(self) -> Check:
        """The verdict as the ``"active-test"`` :class:`~advlab.evaluate.Check`: ``"fail"`` when unreliable,
        ``"skip"`` when no point could be tested."""
        meaning = ("The binarised model has an adversarial example inside the budget by construction; a suite "
                   "that misses it on many points misses adversarial examples that exist, so its robust "
                   "accuracy overstates robustness.")
        details = self.to_dict()
        if self.n_valid == 0:
            return Check("active-test", "skip",
                         f"no point could be binarised ({len(self.statuses)} tried): the active test did not run",
                         meaning=meaning, details=details)
        figures = (f"the suite {self.suite!r} found the adversarial example that provably exists on "
                   f"{self.n_passed} of {self.n_valid} binarised points ({self.pass_rate:.0%}; needed "
                   f">= {self.threshold:.0%}) at {self.norm} eps={self.eps:g}")
        if self.reliable:
            return Check("active-test", "pass", figures, meaning=meaning, details=details)
        return Check(
            "active-test", "fail", figures + ": the evaluation is unreliable", meaning=meaning,
            advice=("Strengthen the suite: more steps and restarts, suite='standard' rather than a short one, "
                    "and an adaptive attack matching the model (see the other checks' advice: adaptive='bpda', "
                    "'eot' or 'dlr')."),
            details=details,
        )


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` (in registration order), whose input are its features; ``None`` if none.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> last_linear(net) is net[2]
        True
    """
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


@contextmanager
def _capture_input(layer: nn.Module | None, store: list[Tensor]) -> Iterator[None]:
    """Records the input of ``layer`` on every call (nothing when ``layer`` is ``None``)."""
    if layer is None:
        yield
        return

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        store.append(args[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def model_features(model: nn.Module, x: Tensor, layer: nn.Module | None) -> Tensor:
    """``(N, F)`` the input of ``layer`` (flattened) when ``model`` runs on ``x``; the logits when ``layer``
    is ``None``. Differentiable with respect to ``x``."""
    store: list[Tensor] = []
    with _capture_input(layer, store), unchecked_inputs(model):
        out = model(x)
    feats = store[-1] if store else out
    return feats.flatten(1)


class Binarised(nn.Module):
    """A model turned into a binary classifier per anchor point: the readout ``w_i . phi(x) + b_i`` of the
    anchor ``x_i`` nearest to the input (in the threat model's norm) on the features ``phi`` of ``model``.

    Returns four logits ``[-s/2, s/2, m - PAD_MARGIN, m - 2 PAD_MARGIN]`` with ``m = min(-s/2, s/2)`` for the
    score ``s`` (the padding classes 2 and 3 let DLR losses, targeted ones included, apply); class 1 is the
    adversarial class. The routing is piecewise constant (no gradient); gradients flow through the chosen
    readout and the model. ``bounds`` are the model's.

    Args:
        model: the classifier whose features are read. anchors: ``(V, ...)`` the tested points.
        weight: ``(V, F)`` and bias: ``(V,)`` the readouts. norm: the routing distance's norm.
        layer: the layer whose input are the features (``None``: the logits).
    """

    anchors: Tensor
    weight: Tensor
    bias: Tensor

    def __init__(self, model: nn.Module, anchors: Tensor, weight: Tensor, bias: Tensor, norm: str,
                 layer: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.norm = norm
        self.layer = [layer]  # a list: not registered twice as a submodule
        self.bounds = model_bounds(model)
        self.register_buffer("anchors", anchors.detach().reshape(anchors.shape[0], -1).clone())
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    def with_model(self, model: nn.Module) -> Binarised:
        """The same readouts on another view of the model (e.g. its BPDA version: same features, other
        gradients); ``model`` must contain the same feature layer."""
        layer = self.layer[0]
        if layer is not None and not any(m is layer for m in model.modules()):
            raise ValueError("the new model does not contain the feature layer of the binarised model")
        return Binarised(model, self.anchors, self.weight, self.bias, self.norm, layer)

    def route(self, x: Tensor) -> Tensor:
        """``(N,)`` the index of each input's nearest anchor."""
        p = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[self.norm]
        with torch.no_grad():
            flat = x.detach().flatten(1).to(self.anchors.dtype)
            return torch.cdist(flat, self.anchors, p=p).argmin(dim=1)

    def score(self, x: Tensor) -> Tensor:
        """``(N,)`` the readout score ``s`` (positive: class 1)."""
        idx = self.route(x)
        phi = model_features(self.model, x, self.layer[0]).to(self.weight.dtype)
        return (phi * self.weight[idx]).sum(dim=1) + self.bias[idx]

    def forward(self, x: Tensor) -> Tensor:
        s = self.score(x)
        r0, r1 = -s / 2, s / 2
        low = torch.minimum(r0, r1)
        return torch.stack([r0, r1, low - PAD_MARGIN, low - 2 * PAD_MARGIN], dim=1).to(x.dtype)


def _separated(x: Tensor, candidates: Tensor, norm: str, radius: float) -> list[int]:
    """The candidates (in order) kept when each must lie more than ``radius`` from every kept one."""
    if candidates.numel() == 0:
        return []
    flat = x[candidates].flatten(1)
    p = {"linf": math.inf, "l2": 2.0}[norm]
    dist = torch.cdist(flat, flat, p=p)
    kept: list[int] = []
    for i in range(candidates.numel()):
        if all(float(dist[i, j]) > radius for j in kept):
            kept.append(i)
    return [int(candidates[i]) for i in kept]


def _ball_points(x: Tensor, norm: str, eps: float, bounds: tuple[float, float],
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """For each anchor of ``x`` ``(V, ...)``: ``N_INNER`` inner points ``(V, N_INNER, ...)`` within
    ``INNER_RADIUS * eps`` and one boundary point ``(V, ...)`` at (nearly) the full budget, all clipped to
    the bounds. Drawn on the generator's device in anchor order."""
    v, shape, d = x.shape[0], x.shape[1:], x[0].numel()
    device = generator.device if generator is not None else x.device
    if norm == "linf":
        inner = (torch.rand((v, N_INNER, d), generator=generator, device=device, dtype=x.dtype) * 2 - 1)
        inner = inner * (INNER_RADIUS * eps)
        corners = torch.randint(0, 2, (v, d), generator=generator, device=device).to(x.dtype) * 2 - 1
        step = corners * eps
    else:
        direction = torch.randn((v, N_INNER, d), generator=generator, device=device, dtype=x.dtype)
        direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12)
        radius = torch.rand((v, N_INNER, 1), generator=generator, device=device, dtype=x.dtype) ** (1.0 / d)
        inner = direction * radius * (INNER_RADIUS * eps)
        step = torch.randn((v, d), generator=generator, device=device, dtype=x.dtype)
        step = step / step.norm(dim=1, keepdim=True).clamp_min(1e-12) * eps
    inner, step = inner.to(x.device), step.to(x.device)
    flat = x.reshape(v, 1, d)
    inner_x = clip_to_bounds(flat + inner, bounds).reshape(v, N_INNER, *shape)
    boundary = clip_to_bounds(flat[:, 0] + step, bounds)
    if norm == "l2":  # clipping shortens the step: grow it back towards the full budget (never beyond)
        for _ in range(5):
            length = lp_norm(boundary - flat[:, 0], "l2").clamp_min(1e-12)
            step = step * (eps / length).clamp(max=4.0)[:, None]
            boundary = clip_to_bounds(flat[:, 0] + step, bounds)
        delta = boundary - flat[:, 0]
        length = lp_norm(delta, "l2")
        boundary = flat[:, 0] + delta * (eps / length.clamp_min(eps)).clamp(max=1.0)[:, None]
    return inner_x, boundary.reshape(v, *shape)


def _fit_readouts(phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced logistic regressions, one per anchor, on ``phi`` ``(V, M, F)``: rows ``0 .. M-2`` are class 0
    (row 0 the anchor itself), row ``M-1`` class 1. Returns ``(weight (V, F), bias (V,), valid (V,))``
    scaled so that the anchor scores ``-ANCHOR_LOGIT`` and the threshold lies ``CLOSENESS`` of the way from
    the highest inner score to the boundary point's score; ``valid``: the boundary point scores above every
    inner point by at least ``MIN_BOUNDARY_MARGIN`` after scaling."""
    phi = phi.detach().double()
    v, m, f = phi.shape
    centre = phi[:, :1]
    scale = (phi - centre).pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12)
    z = (phi - centre) / scale
    w = torch.zeros((v, f), dtype=z.dtype)
    b = torch.zeros(v, dtype=z.dtype)
    # Adam (Kingma & Ba 2015) written out: the closed-form gradient of the balanced logistic loss, batched
    # over the anchors (torch.optim would import its compiler stack, seconds on a cold start).
    moments = [torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(b)]
    beta1, beta2 = 0.9, 0.999
    for t in range(1, FIT_STEPS + 1):
        s = (z * w[:, None]).sum(dim=2) + b[:, None]
        ds = torch.cat([torch.sigmoid(s[:, :-1]) / (m - 1), -torch.sigmoid(-s[:, -1:])], dim=1)  # dloss/ds
        grads = ((ds[:, :, None] * z).sum(dim=1) + 2 * FIT_L2 * w, ds.sum(dim=1))
        for j, (param, grad) in enumerate(zip((w, b), grads, strict=True)):
            m1, m2 = moments[2 * j], moments[2 * j + 1]
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = (m1 / (1 - beta1**t)) / ((m2 / (1 - beta2**t)).sqrt() + 1e-8)
            param.sub_(FIT_LR * step)
    with torch.no_grad():
        raw = (z * w[:, None]).sum(dim=2)  # (V, M) without bias
        inner_max, s_b, s_x = raw[:, :-1].amax(dim=1), raw[:, -1], raw[:, 0]
        tau = inner_max + CLOSENESS * (s_b - inner_max)
        k = ANCHOR_LOGIT / (tau - s_x).clamp_min(1e-12)
        valid = (s_b > inner_max) & (k * (s_b - tau) >= MIN_BOUNDARY_MARGIN) & torch.isfinite(k)
        weight = k[:, None] * w / scale[:, 0]
        bias = -k * ((w * centre[:, 0]).sum(dim=1) / scale[:, 0, 0] + tau)
    return weight.detach(), bias.detach(), valid


def _build(model: nn.Module, x: Tensor, norm: str, eps: float, layer: nn.Module | None,
           generator: torch.Generator | None, batch_size: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Readouts for the anchors ``x`` ``(V, ...)``: ``(weight, bias, boundary points, valid)``, with up to
    ``RESAMPLE_ROUNDS`` fresh draws for anchors whose readout failed."""
    bounds = model_bounds(model)
    v = x.shape[0]
    weight: Tensor | None = None
    bias = torch.zeros(v, dtype=torch.float64, device=x.device)
    boundary = x.clone()
    valid = torch.zeros(v, dtype=torch.bool, device=x.device)
    for _ in range(RESAMPLE_ROUNDS):
        todo = (~valid).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        xa = x[todo]
        inner, bnd = _ball_points(xa, norm, eps, bounds, generator)
        points = torch.cat([xa[:, None], inner, bnd[:, None]], dim=1)  # (T, M, ...)
        t, m = points.shape[:2]
        flat = points.reshape(t * m, *x.shape[1:])
        step = batch_size or flat.shape[0]
        with attack_mode(model), torch.no_grad():
            phi = torch.cat([model_features(model, flat[i : i + step], layer) for i in range(0, flat.shape[0], step)])
        w, b, ok = _fit_readouts(phi.reshape(t, m, -1))
        if weight is None:
            weight = torch.zeros((v, w.shape[1]), dtype=w.dtype, device=x.device)
        weight[todo], bias[todo], boundary[todo] = w.to(x.device), b.to(x.device), bnd
        valid[todo] = ok.to(x.device)
    assert weight is not None
    return weight, bias, boundary, valid


def _suite_attack(suite: Any, norm: str, eps: float, generator: torch.Generator | None,
                  batch_size: int | None, adaptive: str | list[str] | tuple[str, ...] | None) -> AttackFn:
    """The suite run by :func:`~advlab.evaluate.robustness` (self-checks off) on the binarised model: returns
    its adversarial examples at ``eps`` (the clean input where it found none).

    The adaptive options apply as they do to the model itself: ``"bpda"`` reads the features through
    :func:`~advlab.defenses.bpda` of the (``Defended``) model, ``"eot"`` attacks the mean of
    ``EOT_SAMPLES`` draws of the binarised model, ``"dlr"`` goes to the suite."""
    from advlab.evaluate._robustness import EOT_SAMPLES, adaptive_modes

    modes = adaptive_modes(adaptive)

    def run(binarised: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
        from advlab.defenses import EOT, Defended, bpda
        from advlab.evaluate._robustness import robustness

        attacked: nn.Module = binarised
        if "bpda" in modes and isinstance(binarised, Binarised):
            if not isinstance(binarised.model, Defended):
                raise ValueError(f"adaptive='bpda' needs an advlab.defenses.Defended model, got "
                                 f"{type(binarised.model).__name__}")
            attacked = binarised.with_model(bpda(binarised.model))
        if "eot" in modes:
            attacked = EOT(attacked, samples=EOT_SAMPLES)
        with warnings.catch_warnings():  # doubts about the binarised model's gradients: the verdict says it
            warnings.simplefilter("ignore", RobustnessWarning)
            evaluation = robustness(attacked, x, labels, norm=norm, eps=[eps], suite=suite, batch_size=batch_size,
                                    generator=generator, checks=False, adaptive=["dlr"] if "dlr" in modes else None)
        return evaluation.x_adv[0]

    return run


def active_test(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps: float,
    suite: Any = "standard",
    n: int = 20,
    generator: torch.Generator | None = None,
    threshold: float = 0.9,
    batch_size: int | None = None,
    adaptive: str | list[str] | None = None,
) -> ActiveTestResult:
    """The binarization test (Zimmermann et al., NeurIPS 2022): can the suite find adversarial examples that
    provably exist?

    Threat model: the ``norm`` ball of radius ``eps`` (linf or l2) intersected with the model's bounds.
    For each of ``n`` correctly classified points of ``x`` (in order, more than ``2 eps`` apart), a linear
    readout on the model's features makes the point and ``N_INNER`` random points within
    ``INNER_RADIUS * eps`` class 0 and one boundary point at the full budget class 1 (points whose readout
    cannot separate them are redrawn up to ``RESAMPLE_ROUNDS`` times, then marked ``"invalid"``); the suite
    is run by :func:`~advlab.evaluate.robustness` on the binarised model (:class:`Binarised`, all points in
    one model) with labels 0, and a point passes when what it returns is classified 1, inside the ball and
    the bounds (re-checked here). The evaluation is reliable when ``n_passed / n_valid >= threshold``.

    Args:
        model: returns logits for inputs within its bounds. x: ``(N, ...)`` points. y: ``(N,)`` classes.
        norm: ``"linf"`` or ``"l2"``. eps: the budget tested (raw input units, > 0).
        suite: a suite name, a ``Suite`` or a TOML path, as :func:`~advlab.evaluate.robustness` takes
            (default ``"standard"``). n: points tested (default 20). generator: draws of the inner and
            boundary points and the suite's randomness. threshold: pass rate needed (default 0.9).
        batch_size: chunk size of the feature passes and of the suite. adaptive: the adaptive options of
            :func:`~advlab.evaluate.robustness` the evaluation used (``"bpda"``, ``"eot"``, ``"dlr"``), applied
            to the binarised model the same way.

    Returns:
        An :class:`ActiveTestResult`; ``.check()`` is its :class:`~advlab.evaluate.Check`.

    Example:
        >>> import torch, advlab
        >>> from advlab.evaluate._active import active_test
        >>> g = torch.Generator().manual_seed(0)
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10, generator=g)
        >>> x = torch.rand(8, 1, 8, 8, generator=g)
        >>> r = active_test(model, x, model(x).argmax(1), norm="linf", eps=0.1, suite="quick", n=2, generator=g)
        >>> r.n_valid, r.check().status
        (2, 'pass')
    """
    attack = _suite_attack(suite, norm, float(eps), generator, batch_size, adaptive)
    name = suite if isinstance(suite, str) else str(getattr(suite, "name", suite))
    return binarization_test(model, x, y, norm=norm, eps=eps, attack=attack, suite_name=name, n=n,
                             generator=generator, threshold=threshold, batch_size=batch_size)


def binarization_test(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps: float,
    attack: AttackFn,
    suite_name: str,
    n: int = 20,
    generator: torch.Generator | None = None,
    threshold: float = 0.9,
    batch_size: int | None = None,
) -> ActiveTestResult:
    """:func:`active_test` with any attack: ``attack(binarised, anchors, labels) -> x_adv`` ``(V, ...)``
    (the clean anchor where it found nothing); ``suite_name`` names it in the result."""
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    norm = check_norm(norm, ACTIVE_NORMS)
    eps = check_float("eps", eps, inclusive=False)
    n = check_int("n", n)
    threshold = check_float("threshold", threshold, maximum=1.0)
    bounds = model_bounds(model)
    check_batch(x, bounds)
    y = check_labels(y, x.shape[0], device=x.device)
    with attack_mode(model), torch.no_grad():
        step = batch_size or x.shape[0]
        pred = torch.cat([model(x[i : i + step]).argmax(dim=1) for i in range(0, x.shape[0], step)])
    correct = (pred == y).nonzero().squeeze(1)
    layer = last_linear(model)
    # Candidates in order, pairwise more than 2 eps apart: routing to the nearest anchor is then exact on
    # every ball. Up to 3 n are prepared, so that invalid points can be replaced.
    candidates = _separated(x, correct[: max(8 * n, 64)], norm, 2.0 * eps)[: 3 * n]
    chosen: list[int] = []
    statuses: dict[int, str] = {}
    weights, biases, boundaries = [], [], []
    for start in range(0, len(candidates), n):
        need = n - len(chosen)
        if need <= 0:
            break
        batch = candidates[start : start + need]
        w, b, bnd, ok = _build(model, x[batch], norm, eps, layer, generator, batch_size)
        for j, i in enumerate(batch):
            if bool(ok[j]):
                chosen.append(i)
                weights.append(w[j])
                biases.append(b[j])
                boundaries.append(bnd[j])
            else:
                statuses[i] = "invalid"
    indices = sorted(set(chosen) | set(statuses))
    if not chosen:
        return ActiveTestResult(0, 0, math.nan, threshold, False, [statuses[i] for i in indices], indices,
                                norm, eps, suite_name, time.perf_counter() - t0)
    anchors = x[chosen]
    binarised = Binarised(model, anchors, torch.stack(weights), torch.stack(biases), norm, layer)
    boundary = torch.stack(boundaries)
    # The boundary point must really be the binarised model's adversarial example: class 1, inside the ball
    # and the bounds; the anchor must be class 0. A point where either fails (float noise) is invalid.
    with attack_mode(binarised), torch.no_grad():
        ok = (binarised(boundary).argmax(dim=1) == 1) & (binarised(anchors).argmax(dim=1) == 0)
    ok &= _inside(boundary, anchors, norm, eps, bounds)
    if not bool(ok.all()):
        keep = ok.nonzero().squeeze(1)
        for j in (~ok).nonzero().squeeze(1).tolist():
            statuses[chosen[j]] = "invalid"
        chosen = [chosen[j] for j in keep.tolist()]
        if not chosen:
            return ActiveTestResult(0, 0, math.nan, threshold, False, [statuses[i] for i in indices], indices,
                                    norm, eps, suite_name, time.perf_counter() - t0)
        anchors, boundary = anchors[keep], boundary[keep]
        binarised = Binarised(model, anchors, binarised.weight[keep], binarised.bias[keep], norm, layer)
    labels = torch.zeros(len(chosen), dtype=torch.long, device=x.device)
    x_adv = attack(binarised, anchors, labels).detach()
    with attack_mode(binarised), torch.no_grad():
        hit = binarised(x_adv).argmax(dim=1) == 1
    passed = hit & _inside(x_adv, anchors, norm, eps, bounds)
    for j, i in enumerate(chosen):
        statuses[i] = "passed" if bool(passed[j]) else "failed"
    n_valid, n_passed = len(chosen), int(passed.sum())
    rate = n_passed / n_valid
    return ActiveTestResult(
        n_valid=n_valid, n_passed=n_passed, pass_rate=rate, threshold=threshold, reliable=rate >= threshold,
        statuses=[statuses[i] for i in indices], indices=indices, norm=norm, eps=eps, suite=suite_name,
        seconds=time.perf_counter() - t0, binarised=binarised, anchors=anchors, boundary=boundary, x_adv=x_adv,
    )


def _inside(points: Tensor, anchors: Tensor, norm: str, eps: float, bounds: tuple[float, float]) -> Tensor:
    """``(V,)`` whether each point lies inside its anchor's ball (float tolerance) and the bounds."""
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=points.device)
    dist = lp_norm(points - anchors, norm)
    flat = points.flatten(1)
    within = (flat >= bounds[0] - 1e-6).all(dim=1) & (flat <= bounds[1] + 1e-6).all(dim=1)
    return (dist <= eps * (1 + 1e-5) + 1e-7) & within
