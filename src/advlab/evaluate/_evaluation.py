"""What a worst-case evaluation returns: :class:`Evaluation`, its per-attack :class:`StageCost` and the
self-checks' :class:`Check`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from advlab.evaluate._attack import json_safe

CheckStatus = Literal["pass", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """The verdict of one self-check of an evaluation.

    Attributes:
        name: the check's name (``"single-step"``, ``"eps-monotone"``, ``"unbounded"``, ``"black-box"``,
            ``"randomised"``, ``"probabilities"``, ``"gradients"``, ``"active-test"``).
        status: ``"pass"`` (nothing seen), ``"warn"`` (a sign of gradient masking or of a weak evaluation),
            ``"fail"`` (the evaluation is unreliable: the active test found the suite unable to find
            adversarial examples that provably exist) or ``"skip"`` (not applicable; ``message`` says why).
        message: what was seen, with the numbers.
        meaning: what it means for the evaluation.
        advice: what to try (an option of :func:`~advlab.evaluate.robustness`, an attack, a wrapper).
        adaptive: the ``adaptive=`` option of :func:`~advlab.evaluate.robustness` the check suggests, if any.
        details: the measured figures (strict JSON).
    """

    name: str
    status: CheckStatus
    message: str
    meaning: str = ""
    advice: str = ""
    adaptive: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        """Whether the check warns or fails."""
        return self.status in ("warn", "fail")

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict of the check."""
        return json_safe({"name": self.name, "status": self.status, "message": self.message,
                          "meaning": self.meaning, "advice": self.advice, "adaptive": self.adaptive,
                          "details": self.details})


@dataclass
class Found:
    """Adversarial examples a self-check found at one budget, for points the suite left robust.

    Attributes:
        name: the display name they are merged under, e.g. ``"fgsm (self-check)"``.
        eps_index: the budget's index in :attr:`Evaluation.eps`.
        index: ``(K,)`` int64 indices of the points into the evaluation's ``x``.
        x_adv: ``(K, ...)`` the adversarial examples (inside the ball and the bounds, misclassified).
        distances: ``(K,)`` their perturbation sizes in the evaluation's norm.
    """

    name: str
    eps_index: int
    index: Tensor
    x_adv: Tensor
    distances: Tensor


@dataclass
class StageCost:
    """One attack of the cascade at one budget: how many points it ran on, how many it broke, its cost.

    ``n_forward`` / ``n_backward`` / ``n_queries`` are per-example passes summed over the points attacked
    (as in :class:`~advlab.attacks.AttackResult`); ``pass_budget`` is the most passes (forward + backward,
    or queries) the attack may spend on one example."""

    eps: float
    attack: str
    n_attacked: int
    n_broken: int
    robust_accuracy: float
    n_forward: int
    n_backward: int
    n_queries: int
    seconds: float
    pass_budget: int

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict."""
        return json_safe(dict(self.__dict__))


@dataclass
class Evaluation:
    """A worst-case robustness evaluation of one model over an attack suite and a grid of budgets.

    Attributes:
        suite: the suite's name. norm: the threat model's norm. eps: the budgets, ascending.
        n: the number of points evaluated. clean_correct: ``(N,)`` bool.
        robust: ``(E, N)`` bool, one row per budget: correctly classified and no attack of the suite (nor
            a self-check) found an adversarial example within that budget.
        broken_by: ``(E, N)`` int64, the index in :attr:`attack_names` of the attack that broke the point
            at that budget (``-1``: not broken, or misclassified when clean).
        distances: ``(E, N)`` the perturbation size of the adversarial example that broke the point
            (``NaN`` where not broken).
        x_adv: ``(E, N, ...)`` the adversarial example that broke each point (the clean input where none).
        attack_names: the stages' display names, e.g. ``["apgd-ce", "apgd-t", "square"]`` (self-checks that
            break points append theirs, e.g. ``"fgsm (self-check)"``).
        stages: the cost of every (budget, attack) stage, in the order run.
        checks: the self-checks' verdicts (empty when not run).
        config: the full configuration (suite definition, norm, budgets, batch size, seed, versions).
        seconds: wall time of the whole evaluation, self-checks included.
        x / y: the points evaluated and their classes (not serialised).
    """

    suite: str
    norm: str
    eps: list[float]
    n: int
    clean_correct: Tensor
    robust: Tensor
    broken_by: Tensor
    distances: Tensor
    x_adv: Tensor
    attack_names: list[str]
    stages: list[StageCost]
    config: dict[str, Any]
    seconds: float
    x: Tensor = field(repr=False)
    y: Tensor = field(repr=False)
    checks: list[Check] = field(default_factory=list)

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the clean points."""
        return float(self.clean_correct.double().mean())

    @property
    def robust_accuracy(self) -> list[float]:
        """Robust accuracy at every budget of :attr:`eps`."""
        return [float(row.double().mean()) for row in self.robust]

    @property
    def reliable(self) -> bool:
        """``False`` when a self-check failed (the active test): the numbers cannot be trusted."""
        return not any(c.status == "fail" for c in self.checks)

    @property
    def warnings(self) -> list[Check]:
        """The checks that warn or fail."""
        return [c for c in self.checks if c.fired]

    def cost(self) -> dict[str, float]:
        """Total forward/backward passes, queries and attack seconds over all stages."""
        return {
            "n_forward": sum(s.n_forward for s in self.stages),
            "n_backward": sum(s.n_backward for s in self.stages),
            "n_queries": sum(s.n_queries for s in self.stages),
            "seconds": self.seconds,
        }

    def broken_counts(self) -> list[dict[str, int]]:
        """Per budget, how many points each attack broke first."""
        out = []
        for row in self.broken_by:
            out.append({name: int((row == i).sum()) for i, name in enumerate(self.attack_names)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict (the per-example tensors are left out; :meth:`per_example` has them)."""
        return json_safe({
            "suite": self.suite, "norm": self.norm, "eps": self.eps, "n": self.n,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "reliable": self.reliable, "attack_names": self.attack_names,
            "broken_by_attack": self.broken_counts(),
            "stages": [s.to_dict() for s in self.stages],
            "checks": [c.to_dict() for c in self.checks],
            "cost": self.cost(), "config": self.config,
        })

    def per_example(self) -> dict[str, Any]:
        """Per-example flags as lists: ``robust`` and ``broken_by`` ``(E, N)``, ``distances`` ``(E, N)``."""
        return json_safe({"robust": self.robust.tolist(), "broken_by": self.broken_by.tolist(),
                          "distances": self.distances.tolist()})
