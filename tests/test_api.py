"""The stable top-level API and the registries it exposes."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

import advlab

EXPECTED = {
    "list_datasets": {"digits", "mnist", "fashion-mnist", "cifar10"},
    "list_models": {"softmax", "mlp", "cnn-small", "maxout", "rbf", "lenet5", "resnet-tiny"},
    "list_attacks": {
        "fgsm", "fgm", "bim", "illc", "pgd", "rfgsm", "mifgsm", "deepfool", "cw", "apgd", "jsma",
    },
}


@pytest.mark.parametrize("lister", sorted(EXPECTED))
def test_registries_hold_the_promised_names(lister: str) -> None:
    names = getattr(advlab, lister)()
    assert names == sorted(names)
    missing = EXPECTED[lister] - set(names)
    assert not missing, f"{lister}() lacks {sorted(missing)}"


def test_every_registered_attack_is_a_module_attribute() -> None:
    for name in advlab.list_attacks():
        fn = advlab.attacks.get_attack(name)
        assert getattr(advlab.attacks, name) is fn, f"advlab.attacks.{name} is not the registered function"
        assert fn.__doc__ and "Example" in fn.__doc__, f"{name} lacks the docstring template (no example)"


def test_top_level_exports_resolve() -> None:
    for name in advlab.__all__:
        assert getattr(advlab, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        _ = advlab.not_a_thing  # type: ignore[attr-defined]


def test_import_is_cheap_and_side_effect_free() -> None:
    # Importing the package must not pull in torch-heavy submodules or train anything.
    code = "import sys, advlab; print('advlab.attacks' in sys.modules, 'advlab.data' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid names: .*digits"):
        advlab.load_dataset("nope", "train")
    with pytest.raises(ValueError, match=r"valid names: .*cnn-small"):
        advlab.create_model("nope", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=r"valid names: .*pgd"):
        advlab.attacks.get_attack("nope")


def test_cli_list_and_version() -> None:
    main = importlib.import_module("advlab.cli.main")
    runner = CliRunner()
    result = runner.invoke(main.cli, ["list"])
    assert result.exit_code == 0, result.output
    for kind in ("datasets", "models", "attacks", "defenses", "experiments"):
        assert f"{kind}:" in result.output
    assert "cnn-small" in result.output and "pgd" in result.output
    result = runner.invoke(main.cli, ["list", "models"])
    assert result.exit_code == 0 and result.output.startswith("models: ")
    result = runner.invoke(main.cli, ["--version"])
    assert result.exit_code == 0 and advlab.__version__ in result.output
