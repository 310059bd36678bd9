"""Input transformations of the failing defenses, as ``nn.Module``s mapping raw inputs within bounds to raw
inputs within the same bounds (:class:`Quantize`, :class:`JPEGLike`, :class:`GaussianNoise`), and
:class:`RandomDropout`, dropout kept on at test time. Public through :mod:`advlab.defenses.wrappers`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_float, check_int
from advlab.attacks._validation import model_bounds

# The standard JPEG luminance quantisation table (ITU-T T.81, Annex K), for quality 50.
_JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def _check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds must be a pair (low, high), got {bounds!r}")
    low = check_float("bounds[0]", bounds[0], minimum=None)
    high = check_float("bounds[1]", bounds[1], minimum=None)
    if not low < high:
        raise ValueError(f"bounds must satisfy low < high, got {tuple(bounds)!r}")
    return low, high


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _draw(shape: torch.Size, like: Tensor, generator: torch.Generator | None, kind: str) -> Tensor:
    """Standard normal (``kind="normal"``) or uniform [0, 1) values shaped like ``like``, drawn from
    ``generator`` on its own device (the global RNG when ``None``), returned on ``like``'s device."""
    device = like.device if generator is None else generator.device
    sample = torch.randn if kind == "normal" else torch.rand
    return sample(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def model_bounds_of(model: object) -> tuple[float, float]:
    """A model's input bounds: its ``bounds`` attribute, else ``(0.0, 1.0)`` (the attacks' rule,
    :func:`advlab.attacks._validation.model_bounds`).

    Example:
        >>> model_bounds_of(torch.nn.Identity())
        (0.0, 1.0)
    """
    return model_bounds(model)  # type: ignore[arg-type]


class Quantize(nn.Module):
    """Rounds every input value to the nearest of ``levels`` evenly spaced values of ``bounds``.

    Non-differentiable: its autograd gradient is zero almost everywhere, so a gradient attack through it does
    not move (the reason it looks robust); :class:`BPDA` restores a useful gradient (Athalye et al. 2018).

    Args:
        levels: number of values per input coordinate, >= 2 (2: binarisation).
        bounds: ``(low, high)`` of the raw inputs, default ``(0.0, 1.0)``.

    Example:
        >>> Quantize(3)(torch.tensor([[0.1, 0.3, 0.8]]))
        tensor([[0.0000, 0.5000, 1.0000]])
    """

    def __init__(self, levels: int, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.levels = check_int("levels", levels, minimum=2)
        self.bounds = _check_bounds(bounds)

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.bounds
        steps = self.levels - 1
        unit = ((x - low) / (high - low)).clamp(0.0, 1.0)
        return torch.round(unit * steps) / steps * (high - low) + low

    def extra_repr(self) -> str:
        return f"levels={self.levels}, bounds={self.bounds}"


def jpeg_table(quality: int) -> Tensor:
    """The 8x8 JPEG luminance quantisation table at ``quality`` (1-100), scaled as libjpeg scales it
    (``5000 / q`` percent below 50, ``200 - 2 q`` from 50 on; entries within [1, 255]).

    Example:
        >>> int(jpeg_table(50)[0, 0]), int(jpeg_table(100).max())
        (16, 1)
    """
    q = check_int("quality", quality, minimum=1, maximum=100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = torch.tensor(_JPEG_LUMINANCE, dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def dct_matrix(size: int = 8) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ v`` transforms ``v``; ``D.T`` inverts it).

    Example:
        >>> d = dct_matrix()
        >>> bool(torch.allclose(d @ d.T, torch.eye(8, dtype=d.dtype)))
        True
    """
    n = check_int("size", size)
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class JPEGLike(nn.Module):
    """JPEG-like lossy compression in torch: per channel, 8x8 block DCT-II, quantisation by the standard
    luminance table at ``quality``, rounding, dequantisation, inverse DCT, clipping to ``bounds``.

    Inputs ``(N, C, H, W)`` are mapped to the 0-255 range of JPEG (level-shifted by 128) and back; sides that
    are not multiples of 8 are padded by replication and cropped back. No colour conversion, chroma
    subsampling or entropy coding: the lossy step (rounding of quantised coefficients) is the one that
    matters here, and it makes the gradient zero almost everywhere, as with :class:`Quantize`.

    Args:
        quality: 1 (coarsest) to 100 (all quantisation steps 1, nearly lossless).
        bounds: ``(low, high)`` of the raw inputs, default ``(0.0, 1.0)``.

    Example:
        >>> x = torch.rand(2, 1, 8, 8)
        >>> y = JPEGLike(quality=100)(x)
        >>> y.shape, bool((y - x).abs().max() < 0.02)
        (torch.Size([2, 1, 8, 8]), True)
    """

    dct: Tensor
    table: Tensor

    def __init__(self, quality: int = 75, bounds: Sequence[float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.quality = check_int("quality", quality, minimum=1, maximum=100)
        self.bounds = _check_bounds(bounds)
        self.register_buffer("dct", dct_matrix(8).float(), persistent=False)
        self.register_buffer("table", jpeg_table(self.quality).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"JPEGLike takes images (N, C, H, W), got shape {tuple(x.shape)}")
        low, high = self.bounds
        n, c, h, w = x.shape
        ph, pw = (-h) % 8, (-w) % 8
        v = (x - low) * (255.0 / (high - low)) - 128.0
        if ph or pw:
            v = F.pad(v, (0, pw, 0, ph), mode="replicate")
        hb, wb = (h + ph) // 8, (w + pw) // 8
        blocks = v.reshape(n, c, hb, 8, wb, 8).transpose(3, 4)  # (N, C, hb, wb, 8, 8)
        d, table = self.dct.to(v.dtype), self.table.to(v.dtype)
        coeffs = d @ blocks @ d.T
        coeffs = torch.round(coeffs / table) * table
        out = (d.T @ coeffs @ d).transpose(3, 4).reshape(n, c, hb * 8, wb * 8)[:, :, :h, :w]
        return ((out + 128.0) * ((high - low) / 255.0) + low).clamp(low, high)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bounds={self.bounds}"


class GaussianNoise(nn.Module):
    """Adds fresh ``N(0, sigma^2)`` noise on every call, in training and in evaluation mode, then clips to
    ``bounds``: a randomised test-time defense (attacked properly through :class:`EOT`).

    Args:
        sigma: standard deviation of the noise in raw input units, >= 0.
        generator: source of the noise (its device is where it is drawn); ``None``: PyTorch's global RNG.
        bounds: ``(low, high)`` of the raw inputs, default ``(0.0, 1.0)``.

    Example:
        >>> noise = GaussianNoise(0.1, generator=torch.Generator().manual_seed(0))
        >>> x = torch.full((1, 4), 0.5)
        >>> bool((noise(x) != noise(x)).any())
        True
    """

    def __init__(
        self, sigma: float, generator: torch.Generator | None = None, bounds: Sequence[float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        self.sigma = check_float("sigma", sigma)
        self.generator = _check_generator(generator)
        self.bounds = _check_bounds(bounds)

    def forward(self, x: Tensor) -> Tensor:
        if self.sigma == 0.0:
            return x
        noisy = x + self.sigma * _draw(x.shape, x, self.generator, "normal")
        return noisy.clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, bounds={self.bounds}"


class RandomDropout(nn.Module):
    """Dropout that stays on in evaluation mode (test-time randomisation): zeroes each value with probability
    ``p`` and scales the others by ``1 / (1 - p)``, with a fresh mask on every call.

    Args:
        p: drop probability in ``[0, 1)``.
        generator: source of the masks; ``None``: PyTorch's global RNG.

    Example:
        >>> drop = RandomDropout(0.5, generator=torch.Generator().manual_seed(0)).eval()
        >>> out = drop(torch.ones(1, 1000))
        >>> sorted(set(out.flatten().tolist()))
        [0.0, 2.0]
    """

    def __init__(self, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = check_float("p", p, maximum=1.0, max_inclusive=False)
        self.generator = _check_generator(generator)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0:
            return x
        keep = _draw(x.shape, x, self.generator, "uniform") >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
