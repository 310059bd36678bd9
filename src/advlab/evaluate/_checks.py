"""Self-checks of a robustness evaluation: signs of gradient masking or of a weak attack suite.

References: Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018 (the
signs: single-step attacks beating iterative ones, black-box beating white-box, unbounded attacks failing,
randomised and non-differentiable models); Carlini et al., "On Evaluating Adversarial Robustness", 2019
(the checklist); Croce & Hein, ICML 2020 (scale-invariant DLR loss for saturated softmax outputs);
Zimmermann, Brendel, Tramèr & Carlini, "Increasing Confidence in Adversarial Robustness Evaluations",
NeurIPS 2022 (the active test, :mod:`advlab.evaluate._active`).

:func:`run_checks` runs the checks named in :data:`CHECKS` on a model and its :class:`Evaluation`; each
returns a :class:`Check` whose ``advice`` names what to try and whose ``adaptive`` names the option of
:func:`~advlab.evaluate.robustness` to try (``"bpda"``, ``"eot"``, ``"dlr"``). Adversarial examples a
check finds for points the suite left robust come back as :class:`Found`, to be merged into the evaluation.
The thresholds are the module's constants below; a healthy, standard-trained model passes every check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.attacks import RobustnessWarning, attack_mode, attack_spec, fgm, fgsm, pgd
from advlab.attacks._validation import model_bounds
from advlab.defenses.wrappers import BPDA, Defended
from advlab.evaluate._evaluation import Check, Evaluation, Found
from advlab.evaluate._transfer import KIND_ATTACKS, model_kind
from advlab.models.classifier import unchecked_inputs

CHECKS: tuple[str, ...] = (
    "single-step", "eps-monotone", "unbounded", "black-box", "randomised", "probabilities", "gradients",
    "active-test",
)

# eps-monotone: the single-step attack's accuracy may rise from one budget to the next by at most this much
# (absolute accuracy) and by fewer than MONOTONE_MIN_POINTS points before the check warns (a one-step attack
# on a smooth model only gets stronger with a larger step).
MONOTONE_TOLERANCE = 0.02
MONOTONE_MIN_POINTS = 2
# unbounded: PGD (CE loss, from the clean point, UNBOUNDED_STEPS steps) with a budget covering the whole
# input range, on up to UNBOUNDED_POINTS correctly classified points; warns when more than
# UNBOUNDED_MAX_ACCURACY of them stay correctly classified (any input is allowed: an attack that works
# reaches ~0 %).
UNBOUNDED_POINTS = 100
UNBOUNDED_STEPS = 50
UNBOUNDED_MAX_ACCURACY = 0.05
# black-box: warns when at some budget the score-based stages broke more than BLACKBOX_SHARE of the n points
# and at least BLACKBOX_MIN_POINTS points that the gradient stages before them left robust.
BLACKBOX_SHARE = 0.01
BLACKBOX_MIN_POINTS = 2
# randomised: two forward passes of up to RANDOM_POINTS inputs in eval mode differ by more than
# RANDOM_TOLERANCE relative to the logits' scale.
RANDOM_POINTS = 32
RANDOM_TOLERANCE = 1e-5
# probabilities: on up to PROB_POINTS inputs, every output >= 0 and every row sums to 1 within PROB_TOLERANCE.
PROB_POINTS = 256
PROB_TOLERANCE = 1e-4
# gradients: on up to GRAD_POINTS correctly classified points, the share whose input gradient of the CE loss
# has an L2 norm at most GRAD_TINY (exactly zero included); warns above GRAD_SHARE. A healthy trained digits
# CNN has norms >= 3e-4; a softmax saturated in float32 gives exactly 0. A vanishing gradient at a point
# whose CE loss is below SATURATED_LOSS (float64) is put down to a saturated softmax.
GRAD_POINTS = 256
GRAD_TINY = 1e-10
GRAD_SHARE = 0.1
SATURATED_LOSS = 1e-6
# active-test: points binarised (see advlab.evaluate._active) and the pass rate needed.
ACTIVE_N = 20
ACTIVE_THRESHOLD = 0.9

_MEANING = {
    "single-step": ("An iterative attack should never lose to one gradient step from the clean point: where "
                    "it does, its steps went astray (gradient masking, a step size or loss unsuited to the "
                    "model) and robust accuracy is overstated; the points found are merged into the "
                    "evaluation (worst case)."),
    "eps-monotone": ("A larger budget contains every smaller one, so robust accuracy cannot rise with eps, and "
                     "a single step of a larger size should break at least as many points; a rise means the "
                     "attacks follow misleading gradients (gradient masking)."),
    "unbounded": ("With a budget covering the whole input range any input is allowed, so an attack that works "
                  "reaches ~0 % accuracy; points that stay correct show that the attack cannot move the "
                  "model (zero, saturated or misleading gradients), so bounded results mean little."),
    "black-box": ("A score-based attack that uses no gradients broke points the gradient attacks missed: the "
                  "gradients are less useful than the model's outputs, a classic sign of gradient masking."),
    "randomised": ("The model's outputs change from call to call in eval mode: a gradient of one draw points "
                   "the wrong way for the next, and an example that fools one draw may not fool another."),
    "probabilities": ("The model returns probabilities (a softmax at the end): the cross-entropy of the "
                      "attacks applies a second softmax and its gradients vanish where the first saturates."),
    "gradients": ("The input gradient of the loss is zero or vanishing at many points, so gradient attacks "
                  "cannot move them: the robust accuracy of gradient stages is an upper bound at best."),
}


def _masking_advice(ctx: _Context) -> tuple[str | None, str]:
    """The adaptive option and advice for a sign of gradient masking, from what the model is."""
    if ctx.blocking_transform():
        return "bpda", ("rerun with adaptive='bpda': the advlab.defenses.Defended model's input transform "
                        "blocks gradients; BPDA replaces it by the identity in the backward pass")
    if ctx.randomised() and "eot" not in ctx.modes:
        return "eot", ("rerun with adaptive='eot': the model is randomised; expectation over transformation "
                       "averages the gradients over its randomness")
    if ctx.saturated_share() > 0.5 and "dlr" not in ctx.modes:
        return "dlr", ("rerun with adaptive='dlr': the softmax saturates and CE gradients vanish; the "
                       "scale-invariant DLR loss does not")
    return None, ("strengthen the suite: more steps and restarts (suite='standard' rather than a short one), "
                  "a score-based attack such as Square; look for non-differentiable or randomised parts of the "
                  "model (advlab.defenses.BPDA, EOT)")


@dataclass
class _Context:
    """What the checks share: the inputs, lazily computed figures and the single-step run."""

    model: nn.Module
    x: Tensor
    y: Tensor
    evaluation: Evaluation
    generator: torch.Generator | None
    batch_size: int | None
    suite: Any
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def bounds(self) -> tuple[float, float]:
        return model_bounds(self.model)

    @property
    def modes(self) -> tuple[str, ...]:
        """The adaptive options the evaluation used (its ``config["adaptive"]``)."""
        raw = self.evaluation.config.get("adaptive") if isinstance(self.evaluation.config, dict) else None
        items = [raw] if isinstance(raw, str) else list(raw or [])
        return tuple(m for m in items if m in ("bpda", "eot", "dlr"))

    @property
    def grad_model(self) -> nn.Module:
        """The model the suite's gradient attacks saw: with the evaluation's ``bpda``/``eot`` options applied
        (as :func:`~advlab.evaluate.robustness` applies them), else the model itself."""
        if "grad_model" not in self.cache:
            model = self.model
            wanted = [m for m in self.modes if m in ("bpda", "eot")]
            if wanted and isinstance(model, nn.Module):
                from advlab.evaluate._robustness import adaptive_model

                try:
                    model = adaptive_model(model, wanted)
                except ValueError:
                    model = self.model
            self.cache["grad_model"] = model
        model_: nn.Module = self.cache["grad_model"]
        return model_

    def gradient_free(self) -> str | None:
        """Why gradient checks do not apply to the model, or ``None`` when they do."""
        if not isinstance(self.model, nn.Module):
            return f"the model is a {type(self.model).__name__}, not a torch module: no input gradient"
        kind = model_kind(self.model)
        if kind in KIND_ATTACKS:
            attack = KIND_ATTACKS[kind]
            via = f" (attack it with {attack!r})" if attack else ""
            return (f"the model is a scikit-learn {kind} model, piecewise constant without an input gradient"
                    f"{via}: gradient checks do not apply")
        if self.probabilities():
            return "the model returns probabilities, which attacks refuse (see the 'probabilities' check)"
        return None

    def logits(self, x: Tensor) -> Tensor:
        step = self.batch_size or max(1, x.shape[0])
        with attack_mode(self.model), torch.no_grad():
            return torch.cat([self.model(x[i : i + step]) for i in range(0, x.shape[0], step)])

    def probabilities(self) -> bool:
        if "probabilities" not in self.cache:
            out = self.logits(self.x[:PROB_POINTS]).double()
            sums = out.sum(dim=1)
            self.cache["prob_figures"] = {
                "min_output": float(out.min()), "max_output": float(out.max()),
                "max_row_sum_error": float((sums - 1).abs().max()), "points": out.shape[0],
            }
            self.cache["probabilities"] = bool((out >= 0).all()) and bool(((sums - 1).abs() <= PROB_TOLERANCE).all())
        return bool(self.cache["probabilities"])

    def randomised(self) -> bool:
        if "randomised" not in self.cache:
            xs = self.x[:RANDOM_POINTS]
            with attack_mode(self.model), torch.no_grad():
                a, b = self.model(xs).double(), self.model(xs).double()
            diff = float((a - b).abs().max())
            scale = float(a.abs().max())
            self.cache["random_figures"] = {"max_difference": diff, "logit_scale": scale, "points": xs.shape[0]}
            self.cache["randomised"] = diff > RANDOM_TOLERANCE * max(scale, 1.0)
        return bool(self.cache["randomised"])

    def blocking_transform(self) -> bool:
        """Whether the model is a :class:`Defended` whose transform (not already BPDA) passes no gradient at
        the first points (only a top-level one: that is what ``adaptive="bpda"`` can wrap)."""
        if "blocking" not in self.cache:
            blocking = False
            modules = [self.model] if isinstance(self.model, Defended) and "bpda" not in self.modes else []
            for module in modules:
                if isinstance(module, Defended) and not isinstance(module.transform, BPDA):
                    xs = self.x[:8].detach().clone().requires_grad_(True)
                    with attack_mode(module), torch.enable_grad():
                        out = module.transform(xs)
                        if not out.requires_grad:
                            blocking = True
                            break
                        (g,) = torch.autograd.grad(out.sum(), xs, allow_unused=True)
                    if g is None or not bool((g != 0).any()):
                        blocking = True
                        break
            self.cache["blocking"] = blocking
        return bool(self.cache["blocking"])

    def gradient_figures(self) -> dict[str, Any]:
        """Per-point CE input-gradient norms and losses at up to ``GRAD_POINTS`` correctly classified points."""
        if "gradients" not in self.cache:
            idx = self.evaluation.clean_correct.nonzero().squeeze(1)[:GRAD_POINTS].to(self.x.device)
            norms, losses = [], []
            step = self.batch_size or max(1, idx.numel())
            model = self.grad_model
            with attack_mode(model):
                for start in range(0, idx.numel(), step):
                    rows = idx[start : start + step]
                    xs = self.x[rows].detach().clone().requires_grad_(True)
                    with torch.enable_grad(), unchecked_inputs(model):
                        out = model(xs)
                        loss = F.cross_entropy(out.double(), self.y[rows], reduction="none")
                        grad = None
                        if loss.requires_grad:
                            (grad,) = torch.autograd.grad(loss.sum(), xs, allow_unused=True)
                    g = torch.zeros_like(xs) if grad is None else grad
                    norms.append(g.detach().reshape(g.shape[0], -1).double().norm(dim=1))
                    losses.append(loss.detach())
            self.cache["gradients"] = {
                "norms": torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64),
                "losses": torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64),
            }
        return dict(self.cache["gradients"])

    def saturated_share(self) -> float:
        """Of the points with a vanishing gradient, the share whose CE loss shows a saturated softmax."""
        if self.gradient_free() is not None:
            return 0.0
        fig = self.gradient_figures()
        vanish = fig["norms"] <= GRAD_TINY
        if not bool(vanish.any()):
            return 0.0
        return float((fig["losses"][vanish] < SATURATED_LOSS).double().mean())

    def single_step(self) -> Any:
        """The single-step attack (FGSM for linf, FGM otherwise) on every point at every budget."""
        if "single_step" not in self.cache:
            ev = self.evaluation
            attack = fgsm if ev.norm == "linf" else fgm
            kwargs = {} if ev.norm == "linf" else {"norm": ev.norm}
            self.cache["single_step"] = _quiet(lambda: attack(self.grad_model, self.x, self.y, eps=list(ev.eps),
                                                              batch_size=self.batch_size, **kwargs))
        return self.cache["single_step"]


def _quiet(fn: Callable[[], Any]) -> Any:
    """``fn()`` with the attacks' robustness warnings silenced (the checks report them themselves)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        return fn()


def _skip(name: str, reason: str) -> Check:
    return Check(name, "skip", reason, meaning=_MEANING.get(name, ""))


def _check_single_step(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "single-step"
    reason = ctx.gradient_free()
    if reason:
        return _skip(name, reason), []
    ev = ctx.evaluation
    if ev.norm not in ("linf", "l2", "l1"):
        return _skip(name, f"no single-step attack for the {ev.norm} norm"), []
    result = ctx.single_step()
    label = f"{'fgsm' if ev.norm == 'linf' else 'fgm'} (self-check)"
    success = result.success.to(ev.robust.device)
    found: list[Found] = []
    per_eps = []
    for e in range(len(ev.eps)):
        hits = (ev.robust[e] & success[e]).nonzero().squeeze(1)
        per_eps.append(int(hits.numel()))
        if hits.numel():
            rows = hits.to(result.x_adv.device)
            found.append(Found(label, e, hits.to(torch.int64), result.x_adv[e, rows].detach().clone(),
                               result.distances[e, rows].detach().clone()))
    details = {"eps": list(ev.eps), "broken_by_single_step": per_eps,
               "left_robust": [int(r.sum()) for r in ev.robust]}
    if not found:
        return Check(name, "pass", f"the single-step attack broke no point the suite left robust "
                     f"(budgets {_fmt(ev.eps)})", meaning=_MEANING[name], details=details), []
    adaptive, advice = _masking_advice(ctx)
    where = ", ".join(f"{k} at eps={e:g}" for k, e in zip(per_eps, ev.eps, strict=True) if k)
    return Check(name, "warn", f"one {label.split()[0].upper()} step broke points the suite left robust: {where} "
                 f"(merged into the evaluation)", meaning=_MEANING[name], advice=advice, adaptive=adaptive,
                 details=details), found


def _check_eps_monotone(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "eps-monotone"
    ev = ctx.evaluation
    if len(ev.eps) < 2:
        return _skip(name, "one budget: nothing to compare"), []
    accuracy = ev.robust_accuracy
    rises = [(ev.eps[i], ev.eps[i + 1], int((ev.robust[i + 1] & ~ev.robust[i]).sum()))
             for i in range(len(ev.eps) - 1)]
    bad_suite = [r for r in rises if r[2] > 0]
    details: dict[str, Any] = {"eps": list(ev.eps), "robust_accuracy": accuracy,
                               "points_robust_only_at_larger_eps": [r[2] for r in rises]}
    problems = []
    if bad_suite:
        problems.append("robust accuracy rises with eps: " + ", ".join(
            f"{k} points robust at eps={b:g} but broken at eps={a:g}" for a, b, k in bad_suite))
    if ctx.gradient_free() is None and ev.norm in ("linf", "l2", "l1"):
        result = ctx.single_step()
        correct = result.clean_correct[None, :] & ~result.success
        counts = correct.sum(dim=1).tolist()
        n = ev.n
        details["single_step_accuracy"] = [c / n for c in counts]
        for i in range(len(counts) - 1):
            up = counts[i + 1] - counts[i]
            if up >= MONOTONE_MIN_POINTS and up / n > MONOTONE_TOLERANCE:
                problems.append(f"the single-step attack's accuracy rises from {counts[i] / n:.1%} at "
                                f"eps={ev.eps[i]:g} to {counts[i + 1] / n:.1%} at eps={ev.eps[i + 1]:g}")
    if not problems:
        return Check(name, "pass", f"robust accuracy does not rise with eps ({_fmt(accuracy, pct=True)} at "
                     f"eps {_fmt(ev.eps)})", meaning=_MEANING[name], details=details), []
    adaptive, advice = _masking_advice(ctx)
    return Check(name, "warn", "; ".join(problems), meaning=_MEANING[name], advice=advice, adaptive=adaptive,
                 details=details), []


def _unbounded_eps(norm: str, bounds: tuple[float, float], dim: int) -> float:
    """A budget covering the whole input range in ``norm``."""
    span = bounds[1] - bounds[0]
    return {"linf": span, "l2": span * math.sqrt(dim), "l1": span * dim}.get(norm, span)


def _check_unbounded(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "unbounded"
    reason = ctx.gradient_free()
    if reason:
        return _skip(name, reason), []
    ev = ctx.evaluation
    idx = ev.clean_correct.nonzero().squeeze(1)[:UNBOUNDED_POINTS].to(ctx.x.device)
    if idx.numel() == 0:
        return _skip(name, "no correctly classified point to attack"), []
    norm = ev.norm
    if norm not in ("linf", "l2", "l1"):
        return _skip(name, f"no unbounded gradient attack for the {norm} norm"), []
    eps = _unbounded_eps(norm, ctx.bounds, ctx.x[0].numel())
    xs, ys = ctx.x[idx], ctx.y[idx]
    result = _quiet(lambda: pgd(ctx.grad_model, xs, ys, eps=eps, norm=norm, steps=UNBOUNDED_STEPS, random_start=False,
                                batch_size=ctx.batch_size, generator=ctx.generator))
    still = int((result.clean_correct & ~result.success[0]).sum())
    accuracy = still / idx.numel()
    details = {"attack": "pgd", "norm": norm, "eps": eps, "steps": UNBOUNDED_STEPS, "points": int(idx.numel()),
               "accuracy": accuracy, "threshold": UNBOUNDED_MAX_ACCURACY}
    figures = (f"PGD ({UNBOUNDED_STEPS} steps) with an unbounded {norm} budget (eps={eps:.4g}) leaves "
               f"{still} of {idx.numel()} points correctly classified ({accuracy:.1%})")
    if accuracy <= UNBOUNDED_MAX_ACCURACY:
        return Check(name, "pass", figures, meaning=_MEANING[name], details=details), []
    adaptive, advice = _masking_advice(ctx)
    return Check(name, "warn", figures + f" (more than {UNBOUNDED_MAX_ACCURACY:.0%})", meaning=_MEANING[name],
                 advice=advice, adaptive=adaptive, details=details), []


def _registered_black_box(name: str) -> bool | None:
    """Whether the registered attack ``name`` is a black-box attack (it has a query budget,
    ``max_queries``); ``None`` when no attack is registered under that name."""
    try:
        spec = attack_spec(name)
    except (KeyError, ValueError):
        return None
    return "max_queries" in spec.defaults()


def _suite_black_box_names(ctx: _Context) -> set[str] | None:
    """The display names of the suite's black-box stages (attacks with a query budget), from its definition
    when it can be read; ``None`` when it cannot."""
    from advlab.evaluate._suites import resolve_suite

    suite = ctx.suite if ctx.suite is not None else ctx.evaluation.suite
    try:
        resolved = resolve_suite(suite)
    except (TypeError, ValueError, OSError):
        return None  # e.g. a suite registered elsewhere: the stages' counts decide
    return {a.name for a in resolved.attacks if "max_queries" in a.full_params()}


def _check_black_box(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "black-box"
    ev = ctx.evaluation
    declared = _suite_black_box_names(ctx)

    def is_black_box(stage: Any) -> bool:
        if declared is not None:  # the suite's definition: an attack with a query budget
            return stage.attack in declared
        if stage.n_attacked > 0 and (stage.n_forward > 0 or stage.n_queries > 0):
            return stage.n_backward == 0  # it ran: its counts tell
        return bool(_registered_black_box(stage.attack))

    bb = [s for s in ev.stages if is_black_box(s)]
    if not bb:
        return _skip(name, f"the suite {ev.suite!r} has no score-based (black-box) stage"), []
    per_eps: list[dict[str, Any]] = []
    problems = []
    for e in ev.eps:
        stages = [s for s in ev.stages if s.eps == e]
        broken = sum(s.n_broken for s in stages if s in bb)
        first = next((s for s in stages if s not in bb), None)
        attacked = first.n_attacked if first is not None else 0
        per_eps.append({"eps": e, "black_box_broken": broken, "gradient_attacked": attacked})
        if broken >= BLACKBOX_MIN_POINTS and broken > BLACKBOX_SHARE * ev.n:
            problems.append(f"{broken} at eps={e:g}")
    details = {"black_box_stages": sorted({s.attack for s in bb}), "per_eps": per_eps, "n": ev.n,
               "threshold_share": BLACKBOX_SHARE, "threshold_points": BLACKBOX_MIN_POINTS}
    names = ", ".join(sorted({s.attack for s in bb}))
    if not problems:
        total = sum(p["black_box_broken"] for p in per_eps)
        return Check(name, "pass", f"the score-based stage(s) ({names}) broke {total} point(s) the gradient "
                     f"stages missed (threshold: > {BLACKBOX_SHARE:.0%} of {ev.n} and >= {BLACKBOX_MIN_POINTS})",
                     meaning=_MEANING[name], details=details), []
    adaptive, advice = _masking_advice(ctx)
    return Check(name, "warn", f"the score-based stage(s) ({names}) broke points the gradient stages left robust: "
                 f"{', '.join(problems)} of {ev.n} points", meaning=_MEANING[name], advice=advice,
                 adaptive=adaptive, details=details), []


def _check_randomised(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "randomised"
    randomised = ctx.randomised()
    fig = ctx.cache["random_figures"]
    if not randomised:
        return Check(name, "pass", f"two forward passes of {fig['points']} inputs in eval mode agree "
                     f"(max difference {fig['max_difference']:.3g})", meaning=_MEANING[name], details=fig), []
    if "eot" in ctx.modes:
        return Check(name, "pass", f"two forward passes of the same {fig['points']} inputs in eval mode differ (max "
                     f"logit difference {fig['max_difference']:.3g}); the evaluation used adaptive='eot'",
                     meaning=_MEANING[name], details=fig), []
    return Check(name, "warn", f"two forward passes of the same {fig['points']} inputs in eval mode differ (max "
                 f"logit difference {fig['max_difference']:.3g})", meaning=_MEANING[name],
                 advice=("rerun with adaptive='eot' (expectation over transformation: gradients averaged over "
                         "the model's randomness; advlab.defenses.EOT)"), adaptive="eot", details=fig), []


def _check_probabilities(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "probabilities"
    probs = ctx.probabilities()
    fig = ctx.cache["prob_figures"]
    if not probs:
        return Check(name, "pass", f"the outputs are not probabilities (range [{fig['min_output']:.3g}, "
                     f"{fig['max_output']:.3g}], row sums off 1 by up to {fig['max_row_sum_error']:.3g})",
                     meaning=_MEANING[name], details=fig), []
    return Check(name, "warn", f"the outputs on {fig['points']} inputs are non-negative and every row sums to 1 "
                 f"(within {PROB_TOLERANCE:g}): probabilities, not logits", meaning=_MEANING[name],
                 advice=("strip the final softmax and pass a model that returns logits (or log-probabilities, "
                         "e.g. torch.log of the outputs); adaptive='dlr' is a partial remedy"),
                 details=fig), []


def _check_gradients(ctx: _Context) -> tuple[Check, list[Found]]:
    name = "gradients"
    reason = ctx.gradient_free()
    if reason:
        return _skip(name, reason), []
    fig = ctx.gradient_figures()
    norms, losses = fig["norms"], fig["losses"]
    count = int(norms.numel())
    if count == 0:
        return _skip(name, "no correctly classified point to take gradients at"), []
    vanish = norms <= GRAD_TINY
    zero = int((norms == 0).sum())
    k = int(vanish.sum())
    share = k / count
    saturated = int((vanish & (losses < SATURATED_LOSS)).sum())
    details = {"points": count, "vanishing": k, "exactly_zero": zero, "share": share, "saturated": saturated,
               "threshold_share": GRAD_SHARE, "tiny_norm": GRAD_TINY,
               "median_norm": float(norms.median()), "min_norm": float(norms.min())}
    figures = (f"the CE loss gradient vanishes (L2 norm <= {GRAD_TINY:g}) at {k} of {count} correctly "
               f"classified points ({share:.0%}; {zero} exactly zero); median norm {float(norms.median()):.3g}")
    if share <= GRAD_SHARE:
        return Check(name, "pass", figures, meaning=_MEANING[name], details=details), []
    if "dlr" in ctx.modes and saturated * 2 >= k:
        return Check(name, "pass", figures + "; a saturated softmax, and the evaluation used adaptive='dlr', "
                     "whose loss does not saturate", meaning=_MEANING[name], details=details), []
    if ctx.blocking_transform():
        adaptive: str | None = "bpda"
        advice = ("rerun with adaptive='bpda': the advlab.defenses.Defended model's input transform passes no "
                  "gradient; BPDA uses the identity in its backward pass (a score-based attack such as Square "
                  "needs no gradient either)")
    elif saturated * 2 >= k:
        adaptive = "dlr"
        advice = ("rerun with adaptive='dlr': the softmax saturates (CE loss ~0 with no gradient); the "
                  "scale-invariant DLR loss still has one (or return unscaled logits)")
    else:
        adaptive = None
        advice = ("a non-differentiable operation inside the model (rounding, quantisation, argmax) blocks "
                  "the gradient: put the input transform in an advlab.defenses.Defended model and rerun with "
                  "adaptive='bpda', or wrap the operation with advlab.defenses.BPDA; rely on a score-based "
                  "attack such as Square meanwhile")
    return Check(name, "warn", figures, meaning=_MEANING[name], advice=advice, adaptive=adaptive,
                 details=details), []


def _check_active(ctx: _Context) -> tuple[Check, list[Found]]:
    from advlab.evaluate._active import ACTIVE_NORMS, active_test

    name = "active-test"
    ev = ctx.evaluation
    if model_kind(ctx.model) in KIND_ATTACKS:
        return _skip(name, f"the model is a scikit-learn {model_kind(ctx.model)} model without features to "
                     f"binarise"), []
    if ev.norm not in ACTIVE_NORMS:
        return _skip(name, f"the active test supports the norms {', '.join(ACTIVE_NORMS)}, not {ev.norm}"), []
    eps = max(ev.eps)
    if eps <= 0:
        return _skip(name, "no positive budget to test"), []
    if ctx.probabilities():
        return _skip(name, "the model returns probabilities, which attacks refuse (see the 'probabilities' check)"), []
    suite = ctx.suite if ctx.suite is not None else ev.suite
    adaptive = ev.config.get("adaptive") if isinstance(ev.config, dict) else None
    result = active_test(ctx.model, ctx.x, ctx.y, norm=ev.norm, eps=eps, suite=suite, n=ACTIVE_N,
                         generator=ctx.generator, threshold=ACTIVE_THRESHOLD, batch_size=ctx.batch_size,
                         adaptive=adaptive)
    return result.check(), []


_RUNNERS: dict[str, Callable[[_Context], tuple[Check, list[Found]]]] = {
    "single-step": _check_single_step,
    "eps-monotone": _check_eps_monotone,
    "unbounded": _check_unbounded,
    "black-box": _check_black_box,
    "randomised": _check_randomised,
    "probabilities": _check_probabilities,
    "gradients": _check_gradients,
    "active-test": _check_active,
}


def _fmt(values: Sequence[float], pct: bool = False) -> str:
    return ", ".join(f"{v:.1%}" if pct else f"{v:g}" for v in values)


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    evaluation: Evaluation,
    *,
    generator: torch.Generator | None = None,
    active_test: bool = False,
    suite: Any = None,
    which: Sequence[str] | None = None,
) -> tuple[list[Check], list[Found]]:
    """Runs the self-checks of :data:`CHECKS` on ``model`` and its ``evaluation`` of ``(x, y)``.

    Signs of gradient masking and of a weak suite (Athalye et al. 2018; Carlini et al. 2019): a single step
    that breaks points the suite left robust, robust accuracy rising with eps, an unbounded attack that leaves
    points correct, a score-based stage that beats the gradient stages, a randomised model, probability
    outputs, vanishing input gradients; with ``active_test=True`` also the binarization test of Zimmermann
    et al. (NeurIPS 2022). A check that does not apply (e.g. gradient checks on a scikit-learn tree) is
    ``"skip"`` with its reason; checks never raise on such models. The thresholds are this module's
    constants.

    Args:
        model: the model evaluated. x: ``(N, ...)`` its points. y: ``(N,)`` their classes.
        evaluation: its :class:`~advlab.evaluate.Evaluation` of ``(x, y)`` (the cascade's result, self-checks
            not yet merged); its ``config["batch_size"]``, when set, chunks the checks' passes too, and its
            ``config["adaptive"]`` (the options the suite used) is applied as the suite applied it: the gradient
            checks differentiate the BPDA / EOT view of the model, and no check suggests an option already used.
        generator: randomness of the checks' attacks and of the active test.
        active_test: also run ``"active-test"`` (slow: the suite runs again on binarised models).
        suite: the suite evaluated (a name, a ``Suite`` or a TOML path; default ``evaluation.suite``), for the
            black-box stages and the active test.
        which: names of the checks to run (default: all of :data:`CHECKS`, ``"active-test"`` only with
            ``active_test=True``).

    Returns:
        ``(checks, found)``: one :class:`~advlab.evaluate.Check` per check run, in :data:`CHECKS` order, and
        the adversarial examples the checks found for points the evaluation left robust (:class:`Found`, e.g.
        ``"fgsm (self-check)"``), inside the ball and the bounds and misclassified.

    Example:
        >>> import torch, advlab
        >>> from advlab.evaluate._checks import run_checks
        >>> from advlab.evaluate._evaluation import Evaluation
        >>> model = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10)
        >>> x = torch.rand(16, 1, 8, 8)
        >>> y = model(x).argmax(1)
        >>> ev = Evaluation("none", "linf", [0.1], 16, torch.ones(16, dtype=torch.bool),
        ...                 torch.ones(1, 16, dtype=torch.bool), torch.full((1, 16), -1),
        ...                 torch.full((1, 16), float("nan")), x[None].clone(), [], [], {}, 0.0, x, y)
        >>> checks, found = run_checks(model, x, y, ev, which=["probabilities", "randomised"])
        >>> [c.status for c in checks]
        ['pass', 'pass']
    """
    if not isinstance(evaluation, Evaluation):
        raise TypeError(f"evaluation must be an advlab.evaluate.Evaluation, got {type(evaluation).__name__}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("x and y must be torch tensors (the points evaluated and their classes)")
    if x.shape[0] != evaluation.n or y.shape[0] != evaluation.n:
        raise ValueError(f"x and y must hold the evaluation's {evaluation.n} points, got {x.shape[0]} and "
                         f"{y.shape[0]}; pass evaluation.x and evaluation.y")
    if which is None:
        names = [c for c in CHECKS if c != "active-test" or active_test]
    else:
        if isinstance(which, str):
            which = [which]
        unknown = [w for w in which if w not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(CHECKS)}")
        names = [c for c in CHECKS if c in which]
    batch_size = evaluation.config.get("batch_size") if isinstance(evaluation.config, dict) else None
    ctx = _Context(model, x, y.to(x.device), evaluation, generator,
                   batch_size if isinstance(batch_size, int) and batch_size > 0 else None, suite)
    checks: list[Check] = []
    found: list[Found] = []
    for name in names:
        try:
            check, more = _RUNNERS[name](ctx)
        except (ValueError, TypeError, RuntimeError) as err:  # a model the check cannot run on
            check, more = _skip(name, f"could not run on this model: {err}"), []
        checks.append(check)
        found.extend(more)
    return checks, found
