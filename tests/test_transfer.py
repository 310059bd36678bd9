"""Transfer attacks, the ensemble of surrogates and the transfer matrix: the ensemble's output against its
formula, rate definitions on constructed models with known answers, models without gradients, the heatmap."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import advlab
from advlab.blackbox import EnsembleSurrogate, rate_among_correct, transfer_attack
from advlab.evaluate import TransferMatrix, has_input_gradient, transfer_matrix
from advlab.report import save_heatmap
from advlab.train import fit


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    x, y = advlab.load_dataset("digits", "test")
    return x[:120], y[:120]


def trained(name: str, seed: int, **options: object) -> nn.Module:
    x, y = advlab.load_dataset("digits", "train")
    model = advlab.create_model(name, dataset="digits", generator=torch.Generator().manual_seed(seed), **options)
    fit(model, x, y, epochs=4, batch_size=64, lr=3e-3, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {"softmax": trained("softmax", 0), "mlp": trained("mlp", 1, hidden=(64,))}


class Constant(nn.Module):
    """Always predicts class ``c`` (logits independent of the input)."""

    def __init__(self, c: int, k: int = 10) -> None:
        super().__init__()
        self.register_buffer("logits", torch.zeros(k).index_fill_(0, torch.tensor([c]), 5.0))
        self.bounds = (0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


# ------------------------------------------------------------------------------------------ ensemble


def test_ensemble_output_is_the_log_of_the_weighted_softmax_mixture(models: dict[str, nn.Module]) -> None:
    a, b = models["softmax"], models["mlp"]
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for weights, alpha in ((None, (0.5, 0.5)), ([3.0, 1.0], (0.75, 0.25)), ([0.0, 2.0], (0.0, 1.0))):
        ens = EnsembleSurrogate([a, b], weights=weights)
        with torch.no_grad():
            want = torch.log(alpha[0] * torch.softmax(a(x), 1) + alpha[1] * torch.softmax(b(x), 1))
            got = ens(x)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(got.exp().sum(1), torch.ones(7), atol=1e-5)
    single = EnsembleSurrogate([a])
    with torch.no_grad():
        assert torch.allclose(single(x), torch.log_softmax(a(x), 1), atol=1e-6)


def test_ensemble_gradient_is_the_combined_loss_gradient(models: dict[str, nn.Module]) -> None:
    a, b = models["softmax"], models["mlp"]
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    y = torch.arange(5)
    ens = EnsembleSurrogate([a, b], weights=[1.0, 3.0])
    (g1,) = torch.autograd.grad(nn.functional.cross_entropy(ens(x), y, reduction="sum"), x)
    mix = 0.25 * torch.softmax(a(x), 1) + 0.75 * torch.softmax(b(x), 1)
    (g2,) = torch.autograd.grad(-mix.gather(1, y[:, None]).log().sum(), x)
    assert torch.allclose(g1, g2, atol=1e-5)


def test_ensemble_refuses_mismatched_members(models: dict[str, nn.Module]) -> None:
    a = models["softmax"]
    other_bounds = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10, bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="bounds differ"):
        EnsembleSurrogate([a, other_bounds])
    with pytest.raises(ValueError, match="class counts differ"):
        EnsembleSurrogate([a, advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=3)])
    with pytest.raises(ValueError, match="input shapes differ"):
        EnsembleSurrogate([a, advlab.create_model("softmax", in_shape=(1, 28, 28), num_classes=10)])
    with pytest.raises(ValueError, match="weights"):
        EnsembleSurrogate([a, a], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="one per model"):
        EnsembleSurrogate([a, a], weights=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleSurrogate([])


# ------------------------------------------------------------------------------------------ transfer rates


def test_rate_among_correct() -> None:
    y = torch.tensor([0, 1, 2, 3])
    assert rate_among_correct(torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 3]), y) == pytest.approx(2 / 3)
    assert math.isnan(rate_among_correct(torch.tensor([1, 0, 0, 0]), y, y))


def test_identical_target_has_the_white_box_rate_and_constant_target_zero(
    models: dict[str, nn.Module], data: tuple[Tensor, Tensor]
) -> None:
    x, y = data
    src = models["mlp"]
    const = Constant(3)
    r = transfer_attack(src, {"same": src, "copy": copy.deepcopy(src), "const": const}, x, y, attack="pgd",
                        eps=[0.1, 0.3], steps=10, generator=torch.Generator().manual_seed(0))
    assert r.targets["same"]["transfer_rate"] == r.white_box_rate
    assert r.targets["copy"]["transfer_rate"] == r.white_box_rate
    assert r.white_box_rate[1] > 0.9  # PGD at 0.3 breaks an undefended MLP on digits
    assert r.targets["const"]["transfer_rate"] == [0.0, 0.0]
    assert r.targets["const"]["clean_accuracy"] == pytest.approx(float((y == 3).double().mean()))
    assert r.targets["const"]["error_rate"] == [pytest.approx(float((y != 3).double().mean()))] * 2
    assert bool(((r.x_adv[1] - x).abs().flatten(1).amax(1) <= 0.3 + 1e-6).all())
    json.dumps(r.to_dict(), allow_nan=False)


def test_ensemble_transfer_runs_any_attack(models: dict[str, nn.Module], data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    r = transfer_attack([models["softmax"], models["mlp"]], [models["mlp"]], x, y, attack="fgsm", eps=0.2)
    assert r.surrogate == "ensemble" and set(r.targets) == {"target_0"}
    assert 0.0 < r.targets["target_0"]["transfer_rate"][0] <= 1.0
    with pytest.raises(ValueError, match="unknown attack"):
        transfer_attack(models["mlp"], [models["mlp"]], x, y, attack="nope", eps=0.1)
    with pytest.raises(ValueError, match="steps"):
        transfer_attack(models["mlp"], [models["mlp"]], x, y, attack="fgsm", eps=0.1, steps=3)


# ------------------------------------------------------------------------------------------ the matrix


def test_matrix_definitions(models: dict[str, nn.Module], data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    mlp, soft = models["mlp"], models["softmax"]
    named = {"mlp": mlp, "mlp-copy": copy.deepcopy(mlp), "softmax": soft, "const": Constant(3)}
    m = transfer_matrix(named, x, y, attack="fgsm", eps=0.2)
    assert m.names == list(named) and m.sources == ["mlp", "mlp-copy", "softmax"]
    assert m.attacks["const"] is None and "gradient" in m.targets_only["const"]
    assert m.rates[3] is None
    # the diagonal is the white-box rate of the attack itself
    direct = advlab.attacks.fgsm(mlp, x, y, eps=0.2)
    assert m.rate("mlp", "mlp") == pytest.approx(rate_among_correct(direct.clean_pred, direct.adv_pred[0], y))
    # a target identical to the source has the white-box rate; a constant target 0 on its correct points
    assert m.rate("mlp", "mlp-copy") == m.rate("mlp", "mlp") == m.rate("mlp-copy", "mlp-copy")
    for source in m.sources:
        assert m.rate(source, "const") == 0.0
    assert m.clean_accuracy["const"] == pytest.approx(float((y == 3).double().mean()))
    assert 0.0 < m.rate("softmax", "mlp") < 1.0  # type: ignore[operator]
    payload = json.loads(m.to_json())
    assert payload["rates"][3] is None and payload["white_box"]["mlp"] == m.rate("mlp", "mlp")
    assert payload["targets_only"] == {"const": m.targets_only["const"]}


def test_matrix_with_an_attack_per_model(models: dict[str, nn.Module], data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    m = transfer_matrix({"a": models["mlp"], "b": models["softmax"]}, x, y, attack={"a": "pgd", "b": None},
                        eps=0.2, attack_options={"pgd": {"steps": 5}})
    assert m.attacks == {"a": "pgd", "b": None} and m.targets_only == {"b": "no attack given for it"}
    assert m.config["attack_options"] == {"pgd": {"steps": 5}}
    with pytest.raises(ValueError, match="not among the models"):
        transfer_matrix({"a": models["mlp"]}, x, y, attack={"z": "pgd"}, eps=0.1)
    with pytest.raises(ValueError, match="one budget"):
        transfer_matrix({"a": models["mlp"]}, x, y, eps=[0.1, 0.2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds differ"):
        other = advlab.create_model("softmax", in_shape=(1, 8, 8), num_classes=10, bounds=(-1.0, 1.0))
        transfer_matrix({"a": models["mlp"], "b": other}, x, y, eps=0.1)
    with pytest.raises(ValueError, match="norm"):
        transfer_matrix({"a": models["mlp"]}, x, y, attack="fgsm", norm="l2", eps=0.1)


def test_models_without_gradients(data: tuple[Tensor, Tensor], models: dict[str, nn.Module]) -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    from_sklearn = getattr(advlab.models, "from_sklearn", None)
    if from_sklearn is None:
        pytest.skip("scikit-learn wrappers not available")
    assert sklearn is not None
    xt, yt = advlab.load_dataset("digits", "train")
    flat = xt.flatten(1).numpy()
    tree = from_sklearn(DecisionTreeClassifier(max_depth=8, random_state=0).fit(flat, yt.numpy()), in_shape=(1, 8, 8))
    forest = from_sklearn(RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0).fit(flat, yt.numpy()),
                          in_shape=(1, 8, 8))
    x, y = data
    assert not has_input_gradient(tree, x, y) and has_input_gradient(models["mlp"], x, y)
    named = {"mlp": models["mlp"], "tree": tree, "forest": forest}
    m = transfer_matrix(named, x[:40], y[:40], attack="fgsm", eps=0.3)
    assert m.attacks["mlp"] == "fgsm" and m.rates[2] is None and "forest" in m.targets_only["forest"]
    if "tree" in advlab.list_attacks():
        assert m.attacks["tree"] == "tree"
        assert m.rate("tree", "tree") is not None and m.rate("tree", "tree") > 0.5  # type: ignore[operator]
    else:
        assert m.attacks["tree"] is None


# ------------------------------------------------------------------------------------------ heatmap


def test_heatmap_is_written_atomically_and_readable(
    models: dict[str, nn.Module], data: tuple[Tensor, Tensor], tmp_path: Path
) -> None:
    from matplotlib.image import imread

    x, y = data
    m = transfer_matrix({"mlp": models["mlp"], "softmax": models["softmax"], "const": Constant(1)}, x[:40], y[:40],
                        attack="fgsm", eps=0.2)
    out = m.save_heatmap(tmp_path / "sub" / "m.png")
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and float(img.std()) > 0
    with pytest.raises(FileExistsError):
        m.save_heatmap(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m.save_heatmap(out, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.png"]  # no temporary file left
    with pytest.raises(ValueError, match="row"):
        save_heatmap([[0.1]], tmp_path / "bad.png", row_labels=["a", "b"], col_labels=["a"])
    assert isinstance(m, TransferMatrix)
