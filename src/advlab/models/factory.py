"""The model registry: ``register_model``, ``create_model`` and ``list_models``.

A model factory is a function ``f(in_shape, num_classes, **hparams) -> nn.Module`` that maps *normalised*
inputs ``(N, C, H, W)`` to logits ``(N, num_classes)``. ``create_model`` wraps the net in a
:class:`~advlab.models.classifier.Classifier` (bounds and normalisation inside) and records
``model_name``/``model_config`` so a checkpoint can rebuild it.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from advlab._registry import Registry
from advlab._validate import check_bool, check_int
from advlab.models.classifier import Classifier


class ModelFactory(Protocol):
    """Signature of a registered model factory."""

    def __call__(self, in_shape: tuple[int, int, int], num_classes: int, /, **hparams: Any) -> nn.Module: ...


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

# Keyword names that ``create_model`` itself consumes; a factory may not use them as hyper-parameters.
_RESERVED = frozenset(
    {"name", "dataset", "in_shape", "num_classes", "normalize", "bounds", "mean", "std", "generator"}
)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``.

    The factory is called as ``factory(in_shape, num_classes, **hparams)`` with ``in_shape = (C, H, W)`` and
    must return an ``nn.Module`` mapping normalised inputs ``(N, C, H, W)`` to logits ``(N, num_classes)``.
    Hyper-parameters must be keyword arguments with JSON-serialisable defaults (tuples are stored as lists,
    so the factory must accept lists too). The tests iterate over :func:`list_models`, so a registered model
    is tested automatically.

    Args:
        name: public name, e.g. ``"cnn-small"``; duplicates raise ``ValueError``.

    Example:
        >>> from torch import nn
        >>> @register_model("doc-linear")
        ... def doc_linear(in_shape, num_classes):
        ...     c, h, w = in_shape
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
        >>> "doc-linear" in list_models()
        True
        >>> _ = MODELS._items.pop("doc-linear")  # keep the doctest side-effect free
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty str, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        clash = _RESERVED.intersection(_hparam_defaults(factory))
        if clash:
            raise ValueError(
                f"model factory {name!r} uses reserved keyword(s) {sorted(clash)} as hyper-parameters; "
                f"rename them"
            )
        return MODELS.register(name)(factory)

    return decorator


def list_models() -> list[str]:
    """Sorted names of the registered models.

    Example:
        >>> "cnn-small" in list_models()
        True
    """
    return MODELS.names()


def _hparam_defaults(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    """Keyword hyper-parameters of ``factory`` (everything after ``in_shape, num_classes``) and defaults."""
    params = list(inspect.signature(factory).parameters.values())[2:]
    return {
        p.name: p.default
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty
    }


def _accepts_var_keyword(factory: Callable[..., nn.Module]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())


def to_json_value(value: Any, what: str) -> Any:
    """Converts ``value`` to plain JSON types (tuples become lists); raises ``ValueError`` if impossible."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite to be stored as JSON, got {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{what} has a non-str key {key!r}; JSON objects need str keys")
            out[key] = to_json_value(item, f"{what}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{what}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return to_json_value(value.item(), what)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return to_json_value(item(), what)
    raise ValueError(
        f"{what} = {value!r} ({type(value).__name__}) is not JSON-serialisable; use numbers, strings, "
        f"bools, None, lists or dicts"
    )


def _check_in_shape(in_shape: Any) -> tuple[int, int, int]:
    if not isinstance(in_shape, (tuple, list)):
        raise TypeError(
            f"in_shape must be (C, H, W), a tuple of three positive ints, got {type(in_shape).__name__} "
            f"{in_shape!r}"
        )
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), three positive ints, got {in_shape!r}")
    c, h, w = (check_int(f"in_shape[{i}] of {tuple(in_shape)!r}", d) for i, d in enumerate(in_shape))
    return c, h, w


def _check_num_classes(num_classes: Any) -> int:
    return check_int("num_classes", num_classes, minimum=2)


def build_net(
    name: str, in_shape: Sequence[int], num_classes: int, hparams: Mapping[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Builds the bare net of model ``name`` and returns it with its full JSON config.

    The config is ``{"in_shape": [C, H, W], "num_classes": K, **hparams}`` where ``hparams`` holds every
    hyper-parameter of the factory, defaults included, so the net can be rebuilt exactly.
    """
    factory = MODELS.get(name)
    shape = _check_in_shape(in_shape)
    k = _check_num_classes(num_classes)
    defaults = _hparam_defaults(factory)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown and not _accepts_var_keyword(factory):
        accepted = ", ".join(sorted(defaults)) or "(none)"
        raise ValueError(
            f"model {name!r} got unknown hyper-parameter(s) {unknown}; accepted hyper-parameters: {accepted}"
        )
    full = {**defaults, **hparams}
    try:
        net = factory(shape, k, **full)
    except TypeError as err:  # a hyper-parameter of the wrong type (or a factory's bad signature)
        raise TypeError(f"model {name!r} rejected its hyper-parameters {dict(hparams)!r}: {err}") from err
    config: dict[str, Any] = {"in_shape": list(shape), "num_classes": k}
    for key, value in full.items():
        config[key] = to_json_value(value, f"hyper-parameter {key!r} of model {name!r}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"model factory {name!r} returned {type(net).__name__}, expected an nn.Module")
    return net, config


def reset_parameters(net: nn.Module, generator: torch.Generator | None = None) -> None:
    """Re-initialises every parameter of ``net`` with PyTorch's default scheme, drawing from ``generator``.

    ``nn.Linear``/``nn.Conv2d`` get PyTorch's default (Kaiming-uniform with ``a = sqrt(5)``, bias uniform in
    ``±1/sqrt(fan_in)``), batch norms their default, and any other module that defines
    ``reset_parameters(generator=None)`` its own scheme. With a seeded generator the result is reproducible
    and the global RNG is left alone.
    """
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # deterministic: ones and zeros
        elif any(True for _ in module.parameters(recurse=False)):
            own = getattr(module, "reset_parameters", None)
            if own is None or "generator" not in inspect.signature(own).parameters:
                raise TypeError(
                    f"cannot initialise {type(module).__name__} from a generator; give it a "
                    f"reset_parameters(generator=None) method or pass generator=None"
                )
            own(generator=generator)


def create_model(
    name: str,
    *,
    dataset: str | None = None,
    in_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    normalize: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    **hparams: Any,
) -> Classifier:
    """Builds a registered model wrapped in a :class:`Classifier` (raw inputs in, logits out).

    ``dataset`` fills ``in_shape``/``num_classes`` and, when ``normalize`` is true, the per-channel mean/std
    from :func:`advlab.data.dataset_info`; explicit ``mean``/``std`` override them. Without a dataset and
    without ``mean``/``std`` the net sees raw inputs. The result has ``model_name`` and
    ``model_config = {"in_shape": [C, H, W], "num_classes": K, **hparams}`` (all hyper-parameters, defaults
    included, as JSON) so :func:`~advlab.models.checkpoint.save_checkpoint` can record how to rebuild it.

    Args:
        name: a name from :func:`list_models`.
        dataset: dataset name (see ``advlab.list_datasets()``), or ``None``.
        in_shape: ``(C, H, W)`` of one input; required without ``dataset``.
        num_classes: number of classes ``K >= 2``; required without ``dataset``.
        normalize: use the dataset's mean/std inside the classifier (default ``True``).
        bounds: ``(low, high)`` of valid raw inputs, default ``(0.0, 1.0)``.
        mean: per-channel mean, overriding the dataset's.
        std: per-channel standard deviation, overriding the dataset's.
        generator: draw the initial weights from this generator (reproducible, global RNG untouched);
            ``None`` uses PyTorch's global RNG.
        **hparams: hyper-parameters of the model (unknown names raise ``ValueError``).

    Returns:
        A :class:`Classifier` in training mode on the CPU.

    Example:
        >>> import torch
        >>> model = create_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=(32,))
        >>> model(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 10])
        >>> model.model_config
        {'in_shape': [1, 8, 8], 'num_classes': 10, 'hidden': [32], 'dropout': 0.0}
    """
    MODELS.get(name)  # unknown names fail first, listing the valid ones
    check_bool("normalize", normalize)
    if dataset is not None:
        from advlab.data import dataset_info  # lazy: models must not require data at import

        info = dataset_info(dataset)
        if in_shape is not None and tuple(in_shape) != tuple(info.shape):
            raise ValueError(
                f"in_shape {tuple(in_shape)} contradicts dataset {dataset!r} with shape {tuple(info.shape)}; "
                f"drop in_shape or the dataset"
            )
        if num_classes is not None and num_classes != info.num_classes:
            raise ValueError(
                f"num_classes={num_classes} contradicts dataset {dataset!r} with {info.num_classes} classes; "
                f"drop num_classes or the dataset"
            )
        in_shape = tuple(info.shape)
        num_classes = info.num_classes
        if normalize and mean is None and std is None:
            mean, std = tuple(info.mean), tuple(info.std)
    if in_shape is None or num_classes is None:
        raise ValueError(
            "create_model needs the input shape and class count: pass dataset=NAME, or in_shape=(C, H, W) "
            "and num_classes=K"
        )
    if not normalize:
        mean = std = None
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    shape = _check_in_shape(in_shape)
    if mean is not None and std is not None and not (len(mean) == len(std) in (1, shape[0])):
        raise ValueError(
            f"mean/std need 1 or C={shape[0]} values each, got {len(mean)} and {len(std)}"
        )
    if generator is None:
        net, config = build_net(name, shape, num_classes, hparams)
    else:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        with torch.random.fork_rng(devices=[]):  # the throw-away default init must not move the global RNG
            net, config = build_net(name, shape, num_classes, hparams)
        reset_parameters(net, generator)
    if mean is not None and std is not None and len(mean) == 1 and shape[0] > 1:
        mean, std = list(mean) * shape[0], list(std) * shape[0]
    clf = Classifier(net, bounds=bounds, mean=mean, std=std)
    clf.model_name = name
    clf.model_config = config
    json.dumps(config)  # guaranteed by build_net; fail loudly here rather than at save time
    return clf
