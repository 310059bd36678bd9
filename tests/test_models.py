"""Tests for the model registry, the zoo, the Classifier wrapper and the RBF helpers."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlab.models import (
    MODELS,
    SKLEARN_MODELS,
    Classifier,
    Maxout,
    RBFLayer,
    create_model,
    init_from_data,
    init_rbf_centers,
    list_models,
    model_hash,
    register_model,
    unchecked_inputs,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Models initialised from a generator and trained by gradient descent. The scikit-learn models (sklearn-*) are
# excluded here: they have no parameters and nothing random (a new one holds zeros until from_sklearn or a
# checkpoint fills its buffers), so "gradients reach every parameter" and "the generator decides the init" do
# not apply; tests/test_sklearn_models.py tests their gradients and conversion on fitted estimators.
TRAINABLE = [name for name in list_models() if name not in SKLEARN_MODELS]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- every registered model -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 3])
@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", TRAINABLE)
def test_forward_backward(name: str, in_shape: tuple[int, int, int], num_classes: int) -> None:
    model = create_model(name, in_shape=in_shape, num_classes=num_classes, generator=_gen())
    model.train()
    x = torch.rand(4, *in_shape, generator=_gen(1)).requires_grad_(True)
    y = torch.arange(4) % num_classes
    logits = model(x)
    assert logits.shape == (4, num_classes)
    assert torch.isfinite(logits).all()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(logits, y), [x, *params])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0, "no gradient reaches the input"
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    dead = [n for n, g in zip(names, grads[1:], strict=True) if not g.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", list_models())
def test_eval_mode_is_deterministic_and_config_rebuilds(name: str) -> None:
    model = create_model(name, in_shape=(1, 8, 8), num_classes=5, generator=_gen(3)).eval()
    x = torch.rand(6, 1, 8, 8, generator=_gen(4))
    assert torch.equal(model(x), model(x))
    # model_config is JSON and rebuilds the same net
    config = json.loads(json.dumps(model.model_config))
    assert config["in_shape"] == [1, 8, 8] and config["num_classes"] == 5
    rebuilt = create_model(name, generator=_gen(3), **config).eval()
    assert rebuilt.model_name == name
    assert rebuilt.model_config == model.model_config
    assert model_hash(rebuilt) == model_hash(model)
    assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", TRAINABLE)
def test_generator_makes_init_reproducible_and_leaves_global_rng(name: str) -> None:
    before = torch.random.get_rng_state()
    a = create_model(name, in_shape=(1, 8, 8), num_classes=3, generator=_gen(7))
    assert torch.equal(torch.random.get_rng_state(), before), "create_model(generator=...) moved the global RNG"
    b = create_model(name, in_shape=(1, 8, 8), num_classes=3, generator=_gen(7))
    c = create_model(name, in_shape=(1, 8, 8), num_classes=3, generator=_gen(8))
    assert model_hash(a) == model_hash(b)
    assert model_hash(a) != model_hash(c)


def test_registry_lists_the_agreed_models() -> None:
    expected = {"softmax", "mlp", "cnn-small", "maxout", "rbf", "lenet5", "resnet-tiny"}
    assert expected <= set(list_models())
    assert list_models() == sorted(list_models()) == MODELS.names()


def test_register_model_adds_a_model_and_rejects_duplicates_and_reserved_names() -> None:
    @register_model("test-linear")
    def _linear(in_shape: tuple[int, int, int], num_classes: int, *, scale: float = 1.0) -> nn.Module:
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    try:
        assert "test-linear" in list_models()
        clf = create_model("test-linear", in_shape=(1, 2, 2), num_classes=2, scale=2.0)
        assert clf.model_config == {"in_shape": [1, 2, 2], "num_classes": 2, "scale": 2.0}
        with pytest.raises(ValueError, match=r"hyper-parameter 'scale' .* is not JSON-serialisable"):
            create_model("test-linear", in_shape=(1, 2, 2), num_classes=2, scale=object())
        with pytest.raises(ValueError, match="already registered"):
            register_model("test-linear")(_linear)
    finally:
        MODELS._items.pop("test-linear")

    def _bad(in_shape: tuple[int, int, int], num_classes: int, *, dataset: str = "x") -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="reserved"):
        register_model("test-bad")(_bad)
    assert "test-bad" not in list_models()


# --- create_model: arguments and errors -------------------------------------------------------------------


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet-152'") as info:
        create_model("resnet-152", in_shape=(1, 8, 8), num_classes=10)
    for name in list_models():
        assert name in str(info.value)


def test_unknown_hparam_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['hiden'\].*dropout, hidden"):
        create_model("mlp", in_shape=(1, 8, 8), num_classes=10, hiden=(3,))


@pytest.mark.parametrize(
    ("name", "hparams", "error", "message"),
    [
        ("mlp", {"hidden": [0]}, ValueError, r"hidden\[0\] must be an integer >= 1, got 0"),
        ("mlp", {"hidden": "wide"}, TypeError, r"'mlp' rejected its hyper-parameters.*hidden must be a list of"),
        ("mlp", {"hidden": []}, ValueError, "hidden must be a non-empty list"),
        ("mlp", {"hidden": (8, True)}, TypeError, r"hidden\[1\] must be an integer, got bool True"),
        ("mlp", {"dropout": 1.5}, ValueError, "dropout must be < 1, got 1.5"),
        ("mlp", {"dropout": -0.1}, ValueError, "dropout must be >= 0, got -0.1"),
        ("mlp", {"dropout": "0.5"}, TypeError, "dropout must be a number, got str '0.5'"),
        ("cnn-small", {"kernel_size": 4}, ValueError, "kernel_size must be odd"),
        ("cnn-small", {"channels": (32, -1)}, ValueError, r"channels\[1\] must be an integer >= 1, got -1"),
        ("maxout", {"pieces": 0}, ValueError, "pieces must be an integer >= 1, got 0"),
        ("rbf", {"num_centers": 2.5}, TypeError, "num_centers must be an integer, got float 2.5"),
        ("rbf", {"batch_norm": "yes"}, TypeError, "batch_norm must be True or False, got str 'yes'"),
        ("lenet5", {"activation": "gelu"}, ValueError, "activation must be one of"),
        ("lenet5", {"pool": "min"}, ValueError, "pool must be one of"),
        ("resnet-tiny", {"blocks": 0}, ValueError, "blocks must be an integer >= 1, got 0"),
        ("mlp", {"hidden": (8,), "dropout": float("nan")}, ValueError, "dropout must be finite, got nan"),
    ],
)
def test_bad_hparams_raise_clear_errors(
    name: str, hparams: dict[str, object], error: type[Exception], message: str
) -> None:
    """Wrong types raise TypeError, values out of range ValueError, each naming the hyper-parameter."""
    with pytest.raises(error, match=message):
        create_model(name, in_shape=(1, 8, 8), num_classes=10, **hparams)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "pass dataset=NAME, or in_shape"),
        ({"in_shape": (1, 8, 8)}, "pass dataset=NAME, or in_shape"),
        ({"in_shape": (8, 8), "num_classes": 10}, r"in_shape must be \(C, H, W\)"),
        ({"in_shape": (1, 0, 8), "num_classes": 10}, r"in_shape\[1\] of \(1, 0, 8\) must be an integer >= 1, got 0"),
        ({"in_shape": (1, 8, 8), "num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"in_shape": (1, 8, 8), "num_classes": 10, "mean": [0.5]}, "both mean and std"),
        ({"in_shape": (3, 8, 8), "num_classes": 10, "mean": [0.5, 0.5], "std": [1, 1]}, "1 or C=3 values"),
        ({"in_shape": (1, 8, 8), "num_classes": 10, "bounds": (1.0, 0.0)}, "low < high"),
    ],
)
def test_bad_create_model_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("softmax", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_shape": 8, "num_classes": 10}, r"in_shape must be \(C, H, W\), a tuple.*got int 8"),
        ({"in_shape": (1, 8.0, 8), "num_classes": 10}, r"in_shape\[1\] of \(1, 8\.0, 8\) must be an integer, got"),
        ({"in_shape": (1, 8, 8), "num_classes": 10.0}, "num_classes must be an integer, got float 10.0"),
        ({"in_shape": (1, 8, 8), "num_classes": True}, "num_classes must be an integer, got bool True"),
        ({"in_shape": (1, 8, 8), "num_classes": 10, "normalize": "yes"}, "normalize must be True or False"),
    ],
)
def test_create_model_arguments_of_the_wrong_type_raise_type_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        create_model("softmax", **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _FakeInfo:
    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaces ``advlab.data`` by a stub with one dataset, so these tests do not depend on the data module."""
    module = types.ModuleType("advlab.data")

    def dataset_info(name: str) -> _FakeInfo:
        if name != "fake":
            raise ValueError(f"unknown dataset {name!r}; valid names: fake")
        return _FakeInfo("fake", (3, 8, 8), 4, (0.2, 0.4, 0.6), (0.1, 0.2, 0.3))

    module.dataset_info = dataset_info  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "advlab.data", module)


@pytest.mark.usefixtures("fake_data")
def test_dataset_fills_shape_classes_and_normalisation() -> None:
    clf = create_model("mlp", dataset="fake", hidden=(8,))
    assert clf.model_config["in_shape"] == [3, 8, 8]
    assert clf.model_config["num_classes"] == 4
    mean, std = clf.normalization()
    assert mean == pytest.approx([0.2, 0.4, 0.6]) and std == pytest.approx([0.1, 0.2, 0.3])
    assert create_model("mlp", dataset="fake", normalize=False).normalization() == (None, None)
    with pytest.raises(ValueError, match="contradicts dataset 'fake'"):
        create_model("mlp", dataset="fake", in_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="contradicts dataset 'fake'"):
        create_model("mlp", dataset="fake", num_classes=10)
    with pytest.raises(ValueError, match="unknown dataset"):
        create_model("mlp", dataset="nope")


def test_real_dataset_info() -> None:
    from advlab.data import dataset_info

    info = dataset_info("digits")
    clf = create_model("softmax", dataset="digits")
    assert tuple(clf.model_config["in_shape"]) == tuple(info.shape)
    assert clf.model_config["num_classes"] == info.num_classes
    assert clf(torch.rand(2, *info.shape)).shape == (2, info.num_classes)


# --- the Classifier wrapper -------------------------------------------------------------------------------


def test_normalisation_inside_equals_manual_normalisation() -> None:
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    clf = create_model("softmax", in_shape=(3, 4, 4), num_classes=5, mean=mean, std=std, generator=_gen())
    x = torch.rand(7, 3, 4, 4, generator=_gen(1))
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(clf(x), clf.net(manual))
    # a single mean/std value is broadcast over the channels
    one = create_model("softmax", in_shape=(3, 4, 4), num_classes=5, mean=[0.5], std=[0.25], generator=_gen())
    assert one.normalization() == ([0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(one(x), one.net((x - 0.5) / 0.25))


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.full((2, 1, 8, 8), 1.5), ValueError, r"range over \[1\.5, 1\.5\].*bounds \(0\.0, 1\.0\)"),
        (torch.full((2, 1, 8, 8), -0.1), ValueError, "expects raw inputs within bounds"),
        (torch.full((2, 1, 8, 8), float("nan")), ValueError, "NaN or inf"),
        (torch.full((2, 1, 8, 8), float("inf")), ValueError, "NaN or inf"),
        (torch.ones(2, 1, 8, 8, dtype=torch.uint8), TypeError, "floating-point tensor.*x.float()"),
        (torch.ones(2, 1, 8, 8, dtype=torch.int64), TypeError, "floating-point"),
    ],
)
def test_classifier_rejects_bad_inputs(x: torch.Tensor, error: type[Exception], message: str) -> None:
    clf = create_model("softmax", in_shape=(1, 8, 8), num_classes=3)
    with pytest.raises(error, match=message):
        clf(x)


def test_classifier_rejects_non_tensors_and_respects_bounds() -> None:
    clf = create_model("softmax", in_shape=(1, 2, 2), num_classes=3, bounds=(-1.0, 1.0))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        clf([[0.0]])
    assert clf(torch.full((1, 1, 2, 2), -1.0)).shape == (1, 3)
    with pytest.raises(ValueError, match="bounds"):
        clf(torch.full((1, 1, 2, 2), -1.01))


def test_unchecked_inputs_switches_checks_off_and_restores_them() -> None:
    clf = create_model("softmax", in_shape=(1, 2, 2), num_classes=3)
    x = torch.full((1, 1, 2, 2), 2.0)
    with unchecked_inputs(clf):
        assert clf(x).shape == (1, 3)
    assert clf.check_inputs is True
    with pytest.raises(ValueError):
        clf(x)
    plain = nn.Flatten()
    with unchecked_inputs(plain) as same:
        assert same is plain


# --- architecture facts -----------------------------------------------------------------------------------


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("in_shape", "flat"), [((1, 28, 28), 400), ((3, 32, 32), 400), ((1, 8, 8), 64)])
def test_lenet5_matches_lecun_sizes(in_shape: tuple[int, int, int], flat: int) -> None:
    model = create_model("lenet5", in_shape=in_shape, num_classes=10)
    assert [(m.in_features, m.out_features) for m in _linears(model)] == [(flat, 120), (120, 84), (84, 10)]


@pytest.mark.parametrize(
    ("in_shape", "flat"), [((1, 28, 28), 64 * 7 * 7), ((3, 32, 32), 64 * 8 * 8), ((1, 8, 8), 64 * 2 * 2)]
)
def test_cnn_small_pools_after_each_conv(in_shape: tuple[int, int, int], flat: int) -> None:
    model = create_model("cnn-small", in_shape=in_shape, num_classes=10)
    assert [(m.in_features, m.out_features) for m in _linears(model)] == [(flat, 128), (128, 10)]


def test_cnn_small_pooling_never_shrinks_below_one_pixel() -> None:
    model = create_model("cnn-small", in_shape=(1, 2, 2), num_classes=3, channels=(4, 4, 4))
    assert model(torch.rand(2, 1, 2, 2)).shape == (2, 3)


def test_maxout_paper_configuration() -> None:
    model = create_model("maxout", in_shape=(1, 28, 28), num_classes=10)
    units = [m for m in model.modules() if isinstance(m, Maxout)]
    assert [(u.linear.in_features, u.out_features, u.pieces) for u in units] == [(784, 240, 5), (240, 240, 5)]


def test_maxout_unit_is_max_over_pieces() -> None:
    layer = Maxout(5, 3, pieces=4)
    x = torch.randn(6, 5, generator=_gen())
    pieces = (x @ layer.linear.weight.t() + layer.linear.bias).view(6, 3, 4)
    torch.testing.assert_close(layer(x), pieces.max(dim=-1).values)


def test_rbf_layer_matches_the_gaussian_formula() -> None:
    layer = RBFLayer(4, 6)
    layer.reset_parameters(_gen())  # not the global RNG, whose state depends on the tests run before
    with torch.no_grad():
        layer.log_sigma.copy_(torch.linspace(-0.5, 1.0, 6))
    x = torch.randn(5, 4, generator=_gen())
    d2 = torch.cdist(x, layer.centers) ** 2
    expected = torch.exp(-d2 / (2 * torch.exp(layer.log_sigma) ** 2))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # an input on a centre responds with 1, up to the float32 round-off of |x|^2-2xc+|c|^2
        assert layer(layer.centers[:2].clone())[[0, 1], [0, 1]].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_resnet_tiny_is_residual_and_global_pooled() -> None:
    model = create_model("resnet-tiny", in_shape=(3, 32, 32), num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 3 blocks x 2 convs + 2 projection shortcuts (stage changes)
    assert len(convs) == 1 + 6 + 2
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    assert create_model("resnet-tiny", in_shape=(3, 64, 48), num_classes=10)(torch.rand(2, 3, 64, 48)).shape == (2, 10)


# --- RBF initialisation and learning ----------------------------------------------------------------------


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.long)


def test_init_rbf_centers_random_places_centres_on_normalised_data() -> None:
    x, _ = _digits()
    model = create_model("rbf", in_shape=(1, 8, 8), num_classes=10, num_centers=20, mean=[0.3], std=[0.4])
    init_rbf_centers(model, x[:200], method="random", generator=_gen())
    layer = next(m for m in model.modules() if isinstance(m, RBFLayer))
    z = ((x[:200] - 0.3) / 0.4).flatten(1)
    nearest = torch.cdist(layer.centers.detach(), z).min(dim=1).values
    assert nearest.max() < 1e-4
    assert torch.isfinite(layer.log_sigma).all()
    assert len(set(map(tuple, layer.centers.detach().tolist()))) == 20


def test_init_rbf_centers_needs_an_rbf_model_and_valid_options() -> None:
    x = torch.rand(10, 1, 8, 8)
    with pytest.raises(ValueError, match="exactly one RBFLayer"):
        init_rbf_centers(create_model("mlp", in_shape=(1, 8, 8), num_classes=3), x)
    rbf = create_model("rbf", in_shape=(1, 8, 8), num_classes=3, num_centers=4)
    with pytest.raises(ValueError, match="method must be"):
        init_rbf_centers(rbf, x, method="kmedoids")
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        init_rbf_centers(rbf, x.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"non-empty batch.*got shape \(0, 1, 8, 8\)"):
        init_rbf_centers(rbf, x[:0])
    with pytest.raises(ValueError, match="lloyd_steps must be an integer >= 0, got -1"):
        init_rbf_centers(rbf, x, lloyd_steps=-1)
    with pytest.raises(ValueError, match="neighbors must be an integer >= 1, got 0"):
        init_rbf_centers(rbf, x, neighbors=0)
    with pytest.raises(ValueError, match="width_scale must be > 0, got 0"):
        init_rbf_centers(rbf, x, width_scale=0.0)
    with pytest.raises(TypeError, match=r"max_samples must be an integer, got float 100\.0"):
        init_rbf_centers(rbf, x, max_samples=100.0)  # type: ignore[arg-type]
    assert init_from_data(create_model("mlp", in_shape=(1, 8, 8), num_classes=3), x) is False
    assert init_from_data(rbf, x, generator=_gen()) is True


def test_rbf_learns_digits() -> None:
    x, y = _digits()
    order = torch.randperm(len(x), generator=_gen())
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    mean, std = float(x_train.mean()), float(x_train.std())
    g = _gen()
    model = create_model(
        "rbf", in_shape=(1, 8, 8), num_classes=10, num_centers=100, mean=[mean], std=[std], generator=g
    )
    init_rbf_centers(model, x_train, generator=g)
    centers_before = next(m for m in model.modules() if isinstance(m, RBFLayer)).centers.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(150):
        idx = torch.randint(len(x_train), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
        assert math.isfinite(float(model.net[1].log_sigma.detach().sum())), f"widths diverged at step {step}"
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(dim=1) == y_test).float().mean())
    assert accuracy >= 0.9, f"rbf reached only {accuracy:.3f} on held-out digits"
    moved = next(m for m in model.modules() if isinstance(m, RBFLayer)).centers.detach() - centers_before
    assert moved.abs().max() > 0, "centres were not trained"


def test_classifier_wraps_any_module() -> None:
    clf = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    assert clf.model_name is None and clf.model_config == {}
    assert clf(torch.rand(3, 1, 2, 2)).shape == (3, 2)
