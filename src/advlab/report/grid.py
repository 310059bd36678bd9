"""An image grid of an attack: clean inputs, amplified perturbations and adversarial inputs, as a PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advlab._validate import check_int

SUCCESS_COLOR = "#c0392b"
NEUTRAL_COLOR = "black"


def _check(name: str, t: object, ndim: int | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t.detach().to("cpu")


def _label(k: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= k < len(class_names):
        return str(class_names[k])
    return str(k)


def _to_display(img: Tensor, bounds: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in ``bounds`` -> an array for ``imshow`` scaled to [0, 1] and its colour map."""
    lo, hi = bounds
    arr = ((img.float() - lo) / (hi - lo)).clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        return arr[0], "gray"
    return np.transpose(arr, (1, 2, 0)), None


def save_attack_grid(
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    logits_clean: Tensor,
    logits_adv: Tensor,
    path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    *,
    success: Tensor | None = None,
    targets: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    max_examples: int = 8,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Saves a PNG with three rows per example column: clean input, perturbation, adversarial input.

    Row 1 shows each clean image titled with its true label and the model's prediction and confidence
    (softmax probability). Row 2 shows the perturbation ``x_adv - x`` amplified to the full display range
    (per example; the title gives the amplification factor and ``max |delta|`` in raw input units): a
    diverging colour map (red positive, blue negative) for 1-channel images, ``0.5 + delta * factor`` for
    RGB. Row 3 shows the adversarial image with its prediction and confidence, titled in red when the
    attack succeeded. Renders with matplotlib's Agg canvas, without pyplot (no display, no global state).

    Args:
        x: ``(N, C, H, W)`` clean inputs within ``bounds``, ``C`` = 1 or 3.
        x_adv: ``(N, C, H, W)`` adversarial inputs.
        y: ``(N,)`` true classes.
        logits_clean: ``(N, K)`` model logits on ``x``.
        logits_adv: ``(N, K)`` model logits on ``x_adv``.
        path: where to write the PNG (parent folders are created).
        class_names: optional names for the ``K`` classes (default: class indices).
        success: optional ``(N,)`` bool verdicts; default: the adversarial prediction differs from ``y``
            (or equals ``targets`` when those are given).
        targets: optional ``(N,)`` target classes of a targeted attack (shown in the bottom row's title).
        bounds: the value range of the inputs, mapped to the display range.
        max_examples: at most this many columns (the first ones), default 8.
        title: optional figure title.
        dpi: resolution of the PNG.

    Returns:
        The path written.

    Example:
        >>> import torch, tempfile, os
        >>> x = torch.rand(4, 3, 8, 8); x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
        >>> p = save_attack_grid(x, x_adv, torch.arange(4), torch.randn(4, 10), torch.randn(4, 10),
        ...                      os.path.join(tempfile.mkdtemp(), "grid.png"))
        >>> p.suffix
        '.png'
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    x = _check("x", x, 4)
    x_adv = _check("x_adv", x_adv, 4)
    y = _check("y", y, 1)
    logits_clean = _check("logits_clean", logits_clean, 2)
    logits_adv = _check("logits_adv", logits_adv, 2)
    n = x.shape[0]
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}; pass (N, C, H, W) tensors")
    for name, t in (("y", y), ("logits_clean", logits_clean), ("logits_adv", logits_adv)):
        if t.shape[0] != n:
            raise ValueError(f"{name} must have {n} rows to match x, got {t.shape[0]}")
    if n == 0:
        raise ValueError("no examples to plot; pass at least one")
    check_int("max_examples", max_examples)
    if not bounds[0] < bounds[1]:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")

    m = min(n, max_examples)
    prob_clean = torch.softmax(logits_clean[:m].float(), dim=1)
    prob_adv = torch.softmax(logits_adv[:m].float(), dim=1)
    conf_clean, pred_clean = prob_clean.max(dim=1)
    conf_adv, pred_adv = prob_adv.max(dim=1)
    tgt = _check("targets", targets, 1)[:m] if targets is not None else None
    if success is not None:
        ok = _check("success", success, 1)[:m].bool()
    elif tgt is not None:
        ok = pred_adv == tgt
    else:
        ok = pred_adv != y[:m]

    fig = Figure(figsize=(1.7 * m + 0.9, 7.0), dpi=dpi)
    axes = fig.subplots(3, m, squeeze=False)
    for row, text in enumerate(("clean", "perturbation", "adversarial")):
        axes[row][0].set_ylabel(text, fontsize=9)
    for j in range(m):
        img, cmap = _to_display(x[j], bounds)
        axes[0][j].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0][j].set_title(
            f"true {_label(int(y[j]), class_names)}\npred {_label(int(pred_clean[j]), class_names)} "
            f"({float(conf_clean[j]):.0%})",
            fontsize=8,
        )
        delta = (x_adv[j] - x[j]).float()
        peak = float(delta.abs().max())
        factor = 0.5 / peak if peak > 0 else 1.0
        if delta.shape[0] == 1:
            lim = peak if peak > 0 else 1.0
            axes[1][j].imshow(delta[0].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            rgb = (0.5 + delta * factor).clamp(0, 1).permute(1, 2, 0).numpy()
            axes[1][j].imshow(rgb, interpolation="nearest")
        axes[1][j].set_title(f"×{factor:.3g}\nmax|δ| {peak:.3g}", fontsize=8)
        img, cmap = _to_display(x_adv[j], bounds)
        axes[2][j].imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        head = f"target {_label(int(tgt[j]), class_names)}\n" if tgt is not None else ""
        axes[2][j].set_title(
            f"{head}pred {_label(int(pred_adv[j]), class_names)} ({float(conf_adv[j]):.0%})",
            fontsize=8, color=SUCCESS_COLOR if bool(ok[j]) else NEUTRAL_COLOR,
            fontweight="bold" if bool(ok[j]) else "normal",
        )
    for ax in (a for row_axes in axes for a in row_axes):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def pick_examples(clean_correct: Tensor, count: int = 8) -> Tensor:
    """Indices of up to ``count`` examples to plot: the first correctly classified ones, then the others."""
    clean_correct = clean_correct.detach().to("cpu").bool()
    order = torch.cat([clean_correct.nonzero().flatten(), (~clean_correct).nonzero().flatten()])
    return order[:count]


def save_record_grid(
    record: Any, model: nn.Module, path: str | os.PathLike[str], class_names: Sequence[str] | None = None,
    max_examples: int = 8,
) -> Path:
    """Saves the image grid of an :class:`~advlab.evaluate.EvalRecord` at its largest budget (see
    :func:`save_attack_grid`): the first correctly classified examples, their perturbations and the
    adversarial inputs with the model's predictions."""
    from advlab.attacks import attack_mode

    result = record.result
    big = max(range(len(result.eps)), key=lambda i: result.eps[i])
    idx = pick_examples(result.clean_correct, max_examples).to(record.x.device)
    xs, xa = record.x[idx], result.x_adv[big][idx]
    with attack_mode(model), torch.no_grad():
        logits_clean, logits_adv = model(xs).cpu(), model(xa).cpu()
    return save_attack_grid(
        xs.cpu(), xa.cpu(), record.y[idx].cpu(), logits_clean, logits_adv, path, class_names=class_names,
        success=result.success[big][idx].cpu(), targets=result.labels[idx].cpu() if result.targeted else None,
        bounds=getattr(model, "bounds", (0.0, 1.0)), max_examples=max_examples,
        title=f"{record.attack} ({result.norm}) eps={result.eps[big]:g}",
    )
