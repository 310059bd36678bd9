"""Building blocks of the model zoo: maxout units, Gaussian RBF units, residual blocks, RBF centre init."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab._validate import check_float, check_int


class Maxout(nn.Module):
    """Fully connected maxout units: each output is the max over ``pieces`` affine maps of the input.

    Reference: Goodfellow, Warde-Farley, Mirza, Courville, Bengio, "Maxout Networks", ICML 2013.

    Args:
        in_features: size of the input vectors.
        out_features: number of maxout units.
        pieces: number of linear pieces ``k`` per unit (``>= 1``).

    Shapes: ``(N, in_features) -> (N, out_features)``.

    Example:
        >>> import torch
        >>> Maxout(6, 4, pieces=3)(torch.randn(2, 6)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, out_features: int, pieces: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.pieces = pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x)
        return z.view(*z.shape[:-1], self.out_features, self.pieces).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, pieces={self.pieces}"


class RBFLayer(nn.Module):
    """Gaussian radial-basis units ``phi_j(x) = exp(-||x - c_j||^2 / (2 sigma_j^2))``.

    Centres ``c_j`` and log-widths ``log sigma_j`` are parameters, so the layer trains end to end. Squared
    distances are computed as ``||x||^2 - 2 x.c + ||c||^2`` (one matrix product), clamped at 0.

    Initialisation without data: centres ~ N(0, 1) (the scale of normalised inputs) and
    ``sigma = sqrt(in_features)``, so a typical unit starts near ``exp(-1)`` rather than at 0 where its
    gradient would vanish. Better: place the centres on training data with :func:`init_rbf_centers`.

    Reference: Broomhead & Lowe, "Multivariable functional interpolation and adaptive networks", 1988;
    Moody & Darken, "Fast learning in networks of locally-tuned processing units", 1989.

    Args:
        in_features: size ``D`` of the input vectors.
        num_centers: number ``M`` of Gaussian units.

    Shapes: ``(N, D) -> (N, M)``, values in ``(0, 1]``.

    Example:
        >>> import torch
        >>> layer = RBFLayer(5, 7)
        >>> out = layer(torch.randn(3, 5))
        >>> out.shape, bool(((out > 0) & (out <= 1)).all())
        (torch.Size([3, 7]), True)
    """

    def __init__(self, in_features: int, num_centers: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_centers = num_centers
        self.centers = nn.Parameter(torch.empty(num_centers, in_features))
        self.log_sigma = nn.Parameter(torch.empty(num_centers))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Centres ~ N(0, 1), widths ``sqrt(in_features)``; reproducible with a seeded ``generator``."""
        with torch.no_grad():
            nn.init.normal_(self.centers, 0.0, 1.0, generator=generator)
            self.log_sigma.fill_(0.5 * math.log(max(self.in_features, 1)))

    def squared_distances(self, x: Tensor) -> Tensor:
        """``||x_i - c_j||^2`` for a batch ``x`` of shape ``(N, D)``, shape ``(N, M)``, clamped >= 0."""
        x2 = (x * x).sum(dim=1, keepdim=True)
        c2 = (self.centers * self.centers).sum(dim=1)
        return (x2 - 2.0 * (x @ self.centers.t()) + c2).clamp_min(0.0)

    def forward(self, x: Tensor) -> Tensor:
        inv_two_var = 0.5 * torch.exp(-2.0 * self.log_sigma)
        return torch.exp(-self.squared_distances(x) * inv_two_var)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_centers={self.num_centers}"


class BasicBlock(nn.Module):
    """Residual basic block (two 3x3 conv-BN-ReLU), 1x1 projection shortcut when the shape changes.

    Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _rbf_layer(model: nn.Module) -> RBFLayer:
    layers = [m for m in model.modules() if isinstance(m, RBFLayer)]
    if len(layers) != 1:
        raise ValueError(
            f"init_rbf_centers needs a model with exactly one RBFLayer, found {len(layers)}; "
            f"build it with create_model('rbf', ...)"
        )
    return layers[0]


def _rbf_inputs(model: nn.Module, layer: RBFLayer, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The inputs the RBF layer sees when ``model`` runs on ``x`` (normalisation/flattening applied)."""
    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args[0].detach())

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                model(x[start : start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


def _kmeans_pp(z: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new centre drawn with prob. ~ D(x)^2."""
    n = z.shape[0]
    z2 = (z * z).sum(dim=1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = torch.randint(n, (1,), generator=generator)
    d2 = (z2 - 2.0 * (z @ z[chosen[0]]) + z2[chosen[0]]).clamp_min(0.0)
    uniform = torch.rand(k, generator=generator)
    for i in range(1, k):
        # inverse-CDF draw from d2 (cheaper than multinomial); zero mass -> uniform over points
        cdf = torch.cumsum(d2.double(), dim=0)
        total = float(cdf[-1])
        if total > 0.0:
            idx = int(torch.searchsorted(cdf, uniform[i].double() * total).clamp_max(n - 1))
        else:
            idx = int(uniform[i] * n) % n
        chosen[i] = idx
        d2 = torch.minimum(d2, (z2 - 2.0 * (z @ z[idx]) + z2[idx]).clamp_min(0.0))
    return z[chosen.to(z.device)].clone()


def _lloyd(z: Tensor, centers: Tensor, steps: int) -> Tensor:
    """``steps`` Lloyd iterations (assign to nearest, move to the mean); empty clusters stay put."""
    z2 = (z * z).sum(dim=1, keepdim=True)
    for _ in range(steps):
        d2 = z2 - 2.0 * (z @ centers.t()) + (centers * centers).sum(dim=1)
        assign = d2.argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=centers.shape[0]).to(z.dtype).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1.0), centers)
    return centers


def init_rbf_centers(
    model: nn.Module,
    x: Tensor,
    *,
    method: str = "kmeans++",
    lloyd_steps: int = 3,
    neighbors: int = 3,
    width_scale: float = 1.0,
    max_samples: int = 10000,
    generator: torch.Generator | None = None,
) -> None:
    """Places the centres of an RBF model on training data and sets the widths from centre spacing.

    Centres: ``"kmeans++"`` (default) seeds with k-means++ on up to ``max_samples`` inputs and refines
    with ``lloyd_steps`` Lloyd iterations; ``"random"`` picks random training inputs. Widths (Moody &
    Darken, 1989): ``sigma_j = width_scale * mean distance from c_j to its `neighbors` nearest centres``.
    Inputs are mapped exactly as in the forward pass (the Classifier's normalisation and the flattening
    apply), so call it on raw training inputs before training. Works in place, under ``no_grad``.

    Reference: Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.

    Args:
        model: a model with one :class:`RBFLayer`, e.g. ``create_model("rbf", ...)``.
        x: raw training inputs ``(N, C, H, W)`` within the classifier's bounds.
        method: ``"kmeans++"`` or ``"random"``.
        lloyd_steps: Lloyd (k-means) refinement steps after seeding (``"kmeans++"`` only).
        neighbors: nearest centres averaged for each width (``>= 1``).
        width_scale: multiplies every width.
        max_samples: inputs used at most (a random subset beyond that).
        generator: randomness for the subset and the seeding.

    Example:
        >>> import torch
        >>> from advlab.models import create_model
        >>> model = create_model("rbf", in_shape=(1, 8, 8), num_classes=10, num_centers=16)
        >>> init_rbf_centers(model, torch.rand(100, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    """
    if method not in ("kmeans++", "random"):
        raise ValueError(f"method must be 'kmeans++' or 'random', got {method!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of training inputs (N, C, H, W), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch tensor of training inputs (N, C, H, W), got shape {tuple(x.shape)}"
        )
    check_int("lloyd_steps", lloyd_steps, minimum=0)
    check_int("neighbors", neighbors)
    check_float("width_scale", width_scale, inclusive=False)
    check_int("max_samples", max_samples)
    layer = _rbf_layer(model)
    if x.shape[0] > max_samples:
        keep = torch.randperm(x.shape[0], generator=generator)[:max_samples].to(x.device)
        x = x[keep]
    z = _rbf_inputs(model, layer, x).to(layer.centers.device, torch.float32)
    m, n = layer.num_centers, z.shape[0]
    if method == "random" or n <= m:
        idx = torch.randint(n, (m,), generator=generator) if n < m else torch.randperm(n, generator=generator)[:m]
        centers = z[idx.to(z.device)].clone()
        if n < m:  # duplicates would share a width of 0: jitter them apart
            noise = torch.randn(centers.shape, generator=generator).to(z.device)
            centers += 1e-2 * z.std() * noise
    else:
        centers = _lloyd(z, _kmeans_pp(z, m, generator), lloyd_steps)
    if m > 1:
        dist = torch.cdist(centers, centers)
        dist.fill_diagonal_(float("inf"))
        near = dist.topk(min(neighbors, m - 1), dim=1, largest=False).values.mean(dim=1)
        fallback = float(near[torch.isfinite(near) & (near > 0)].median()) if bool((near > 0).any()) else 1.0
        sigma = torch.where(near > 0, near, torch.full_like(near, fallback))
    else:
        sigma = (z - centers).norm(dim=1).mean().clamp_min(1e-3).reshape(1)
    with torch.no_grad():
        layer.centers.copy_(centers.to(layer.centers.dtype))
        layer.log_sigma.copy_(torch.log(width_scale * sigma).to(layer.log_sigma.dtype))


def init_from_data(model: nn.Module, x: Tensor, *, generator: torch.Generator | None = None) -> bool:
    """Data-dependent initialisation for models that have one; a no-op (returns ``False``) otherwise.

    Call it on the raw training inputs right after :func:`~advlab.models.create_model` and before
    training; training code can call it for every model. Today it places the centres of RBF models
    (:func:`init_rbf_centers` with its defaults).

    Args:
        model: any model.
        x: raw training inputs ``(N, C, H, W)`` within the model's bounds.
        generator: randomness for the initialisation.

    Returns:
        ``True`` if something was initialised.

    Example:
        >>> import torch
        >>> from advlab.models import create_model
        >>> init_from_data(create_model("softmax", in_shape=(1, 8, 8), num_classes=10), torch.rand(8, 1, 8, 8))
        False
    """
    if any(isinstance(m, RBFLayer) for m in model.modules()):
        init_rbf_centers(model, x, generator=generator)
        return True
    return False
