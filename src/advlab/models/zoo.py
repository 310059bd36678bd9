"""The registered model zoo. Every factory adapts to any input shape ``(C, H, W)`` and class count.

| name | architecture |
|---|---|
| ``softmax`` | softmax regression: flatten + linear |
| ``mlp`` | ReLU multi-layer perceptron |
| ``cnn-small`` | the classic small MNIST CNN: 2 conv (with pooling) + 2 fc, dropout |
| ``maxout`` | maxout network of Goodfellow et al. (2 maxout layers, 240 units x 5 pieces, dropout) |
| ``rbf`` | shallow Gaussian RBF network with learnable centres and widths + linear read-out |
| ``lenet5`` | LeNet-5 style: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, K |
| ``resnet-tiny`` | small CIFAR-style ResNet: 3 stages of basic blocks (16/32/64 channels), BN, global pool |

Every net maps *normalised* inputs to logits; :func:`~advlab.models.factory.create_model` wraps it in a
:class:`~advlab.models.classifier.Classifier` that takes raw inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advlab._validate import check_bool, check_float, check_int
from advlab.models.factory import register_model
from advlab.models.layers import BasicBlock, Maxout, RBFLayer

# ---------------------------------------------------------------------------------------------------------
# hyper-parameter checks


def _int_list(value: Any, what: str) -> list[int]:
    """A list of positive ints (a single int counts as a list of one)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of positive ints, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"{what} must be a non-empty list of positive ints, got {value!r}")
    return [check_int(f"{what}[{i}]", v) for i, v in enumerate(value)]


def _probability(value: Any, what: str) -> float:
    """A dropout probability in ``[0, 1)``."""
    return check_float(what, value, minimum=0.0, maximum=1.0, max_inclusive=False)


def _choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _pool_if_possible(kind: str, size: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """A 2x2 pooling layer, or identity where a side is already 1 (so spatial sides never reach 0)."""
    h, w = size
    if h < 2 or w < 2:
        return nn.Identity(), size
    pool: nn.Module = nn.MaxPool2d(2) if kind == "max" else nn.AvgPool2d(2)
    return pool, (h // 2, w // 2)


# ---------------------------------------------------------------------------------------------------------
# the models


@register_model("softmax")
def softmax_regression(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Softmax (multinomial logistic) regression: flatten + one linear layer; returns logits.

    Example:
        >>> import torch
        >>> softmax_regression((1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


@register_model("mlp")
def mlp(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    """Multi-layer perceptron with ReLU hidden layers (and optional dropout after each).

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        hidden: widths of the hidden layers, default ``(256, 256)``.
        dropout: dropout probability after each hidden layer, default 0.

    Example:
        >>> import torch
        >>> mlp((1, 8, 8), 10, hidden=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    widths = _int_list(hidden, "hidden")
    p = _probability(dropout, "dropout")
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten()]
    prev = c * h * w
    for width in widths:
        layers += [nn.Linear(prev, width), nn.ReLU()]
        if p > 0:
            layers.append(nn.Dropout(p))
        prev = width
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@register_model("cnn-small")
def cnn_small(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    hidden: int = 128,
    conv_dropout: float = 0.25,
    dropout: float = 0.5,
) -> nn.Module:
    """The classic small MNIST CNN: [conv 3x3 - ReLU - maxpool 2] x 2, dropout, fc 128 - ReLU, dropout, fc K.

    Convolutions keep the spatial size (``padding = kernel_size // 2``) and each is followed by 2x2 max
    pooling (skipped once a side is 1), so 28x28 -> 7x7, 32x32 -> 8x8 and 8x8 -> 2x2; pooling after each
    conv makes it about 3x cheaper than the un-padded Keras variant with the same widths.

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        channels: output channels of the conv layers, default ``(32, 64)``.
        kernel_size: odd conv kernel size, default 3.
        hidden: width of the hidden fully connected layer, default 128.
        conv_dropout: dropout after the conv stack, default 0.25.
        dropout: dropout before the output layer, default 0.5.

    Example:
        >>> import torch
        >>> cnn_small((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    widths = _int_list(channels, "channels")
    k = check_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (so padding keeps the size), got {k}")
    fc = check_int("hidden", hidden)
    p_conv = _probability(conv_dropout, "conv_dropout")
    p_fc = _probability(dropout, "dropout")
    c, h, w = in_shape
    layers: list[nn.Module] = []
    size = (h, w)
    prev = c
    for width in widths:
        pool, size = _pool_if_possible("max", size)
        layers += [nn.Conv2d(prev, width, k, padding=k // 2), nn.ReLU(), pool]
        prev = width
    layers += [nn.Dropout(p_conv), nn.Flatten()]
    flat = prev * size[0] * size[1]
    layers += [nn.Linear(flat, fc), nn.ReLU(), nn.Dropout(p_fc), nn.Linear(fc, num_classes)]
    return nn.Sequential(*layers)


@register_model("maxout")
def maxout(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    units: Sequence[int] = (240, 240),
    pieces: int = 5,
    dropout: float = 0.5,
    input_dropout: float = 0.2,
) -> nn.Module:
    """Maxout network (permutation invariant), as used for MNIST in the maxout and FGSM papers.

    Flatten, dropout(``input_dropout``), then per entry of ``units`` a layer of maxout units (max over
    ``pieces`` linear pieces) followed by dropout(``dropout``), and a linear output layer (logits).

    References: Goodfellow et al., "Maxout Networks", ICML 2013 (MNIST: 2 layers of 240 units x 5 pieces,
    dropout); Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        units: maxout units per hidden layer, default ``(240, 240)``.
        pieces: linear pieces per unit, default 5.
        dropout: dropout probability after each maxout layer, default 0.5.
        input_dropout: dropout probability on the inputs, default 0.2.

    Example:
        >>> import torch
        >>> maxout((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    widths = _int_list(units, "units")
    k = check_int("pieces", pieces)
    p = _probability(dropout, "dropout")
    p_in = _probability(input_dropout, "input_dropout")
    c, h, w = in_shape
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(p_in)]
    prev = c * h * w
    for width in widths:
        layers += [Maxout(prev, width, k), nn.Dropout(p)]
        prev = width
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@register_model("rbf")
def rbf(
    in_shape: tuple[int, int, int], num_classes: int, *, num_centers: int = 500, batch_norm: bool = True
) -> nn.Module:
    """Shallow RBF network: flatten, Gaussian RBF units with learnable centres and widths, linear read-out.

    Units are ``exp(-||x - c_j||^2 / (2 sigma_j^2))`` (see :class:`~advlab.models.layers.RBFLayer`).
    Trainable end to end. The RBF activations are standardised by a batch norm before the read-out
    (``batch_norm=True``, default): in eval mode it is a fixed affine map that folds into the read-out, so
    the model is still an RBF network, but training with Adam converges several times faster (the raw
    activations are all positive and strongly correlated). For a better start call
    :func:`~advlab.models.layers.init_rbf_centers` (or :func:`~advlab.models.layers.init_from_data`)
    with the training inputs before training: k-means++ centres, widths from the centre spacing.
    RBF units respond only near their centres, which makes such networks hard to fool with small
    linear perturbations (Goodfellow, Shlens, Szegedy, 2015).

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        num_centers: number of Gaussian units, default 500.
        batch_norm: standardise the activations before the read-out, default ``True``.

    Example:
        >>> import torch
        >>> rbf((1, 8, 8), 10, num_centers=20)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    m = check_int("num_centers", num_centers)
    check_bool("batch_norm", batch_norm)
    c, h, w = in_shape
    norm: nn.Module = nn.BatchNorm1d(m) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Flatten(), RBFLayer(c * h * w, m), norm, nn.Linear(m, num_classes))


@register_model("lenet5")
def lenet5(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: str = "relu",
    pool: str = "max",
) -> nn.Module:
    """LeNet-5 style CNN: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc K.

    Padding follows LeCun et al.: a 32x32 input is used as is (28 -> 14 -> 10 -> 5), smaller inputs get
    2 pixels of padding in the first conv (as MNIST was padded to 32x32), and the second conv is padded
    too when its input is smaller than 10x10 (e.g. 8x8 digits). Pooling is skipped once a side is 1.

    Reference: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
    Proc. IEEE 1998.

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        activation: ``"relu"`` (default) or ``"tanh"`` (closer to the original).
        pool: ``"max"`` (default) or ``"avg"`` (the original subsampling).

    Example:
        >>> import torch
        >>> lenet5((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    act_name = _choice(activation, "activation", ("relu", "tanh"))
    pool_kind = _choice(pool, "pool", ("max", "avg"))

    def act() -> nn.Module:
        return nn.ReLU() if act_name == "relu" else nn.Tanh()

    c, h, w = in_shape
    pad1 = 0 if min(h, w) >= 32 else 2
    h1, w1 = h + 2 * pad1 - 4, w + 2 * pad1 - 4
    pool1, (h1, w1) = _pool_if_possible(pool_kind, (h1, w1))
    pad2 = 0 if min(h1, w1) >= 10 else 2
    h2, w2 = h1 + 2 * pad2 - 4, w1 + 2 * pad2 - 4
    pool2, (h2, w2) = _pool_if_possible(pool_kind, (h2, w2))
    # 5x5 convs with padding 2 keep the size, so every side stays >= 1 for any input
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad1),
        act(),
        pool1,
        nn.Conv2d(6, 16, 5, padding=pad2),
        act(),
        pool2,
        nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, num_classes),
    )


class _ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        prev = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(prev, width, stride))
                prev = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


@register_model("resnet-tiny")
def resnet_tiny(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks: int = 1,
) -> nn.Module:
    """Small CIFAR-style ResNet: 3x3 stem, stages of basic blocks (stride 2 from the second stage on),
    batch norm, global average pooling, linear output. With the defaults this is ResNet-8
    (``blocks = n`` gives ResNet-(6n+2) of He et al.'s CIFAR family). Any ``(C, H, W)`` works.

    Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (Sec. 4.2).

    Args:
        in_shape: ``(C, H, W)``.
        num_classes: output logits ``K``.
        widths: channels of each stage, default ``(16, 32, 64)``.
        blocks: basic blocks per stage, default 1.

    Example:
        >>> import torch
        >>> resnet_tiny((3, 32, 32), 10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    stage_widths = _int_list(widths, "widths")
    n = check_int("blocks", blocks)
    return _ResNet(in_shape[0], num_classes, stage_widths, n)


__all__ = ["cnn_small", "lenet5", "maxout", "mlp", "rbf", "resnet_tiny", "softmax_regression"]
