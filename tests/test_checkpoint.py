"""Tests for checkpoints: safetensors + JSON round trips, hashes, and refusal of damaged, edited or hostile files.

Crash safety, locking and output-path checks are tested in test_file_safety.py."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from advlab.models import (
    CheckpointExistsError,
    Classifier,
    create_model,
    list_models,
    load_checkpoint,
    load_checkpoint_metadata,
    model_hash,
    save_checkpoint,
)
from advlab.models.checkpoint import metadata_hash

IN_SHAPE = (1, 8, 8)


def _model(name: str = "mlp", **hparams: Any) -> Classifier:
    model = create_model(
        name,
        in_shape=IN_SHAPE,
        num_classes=3,
        mean=[0.3],
        std=[0.4],
        generator=torch.Generator().manual_seed(0),
        **hparams,
    )
    model.train()
    with torch.no_grad():  # move batch-norm running statistics away from their defaults
        model(torch.rand(8, *IN_SHAPE, generator=torch.Generator().manual_seed(1)))
    return model


def _x() -> torch.Tensor:
    return torch.rand(5, *IN_SHAPE, generator=torch.Generator().manual_seed(2))


def _edit_json(directory: Path, edit: Any, *, resign: bool = False) -> None:
    """Applies ``edit`` to model.json; ``resign`` also recomputes its meta_hash (a deliberate forger, or a
    hand-made file), so the checks behind the metadata hash are reached."""
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    edit(meta)
    if resign:
        meta["meta_hash"] = metadata_hash(meta)
    path.write_text(json.dumps(meta))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Classifier, Path]:
    model = _model("mlp", hidden=(16,))
    return model, save_checkpoint(model, tmp_path / "ckpt", dataset="digits", metrics={"accuracy": 0.5}, seed=3)


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_logits_and_hash(name: str, tmp_path: Path) -> None:
    model = _model(name)
    path = save_checkpoint(model, tmp_path / name)
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.model_name == name
    assert loaded.model_config == model.model_config
    assert loaded.bounds == model.bounds
    assert loaded.normalization() == model.normalization()
    assert model_hash(loaded) == model_hash(model)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())  # parameters and buffers
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))


def test_metadata_records_everything_needed(saved: tuple[Classifier, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "advlab-checkpoint" and meta["format_version"] == 2
    assert meta["meta_hash"] == metadata_hash(meta)
    assert meta["model"] == {"name": "mlp", "config": model.model_config}
    assert meta["dataset"] == "digits" and meta["seed"] == 3 and meta["metrics"] == {"accuracy": 0.5}
    assert meta["bounds"] == [0.0, 1.0]
    assert meta["normalization"]["mean"] == pytest.approx([0.3])
    assert meta["normalization"]["std"] == pytest.approx([0.4])
    assert set(meta["versions"]) >= {"advlab", "torch", "numpy", "python"}
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["weights"]["sha256"] == _sha256(path / "model.safetensors")
    assert meta["weights"]["content_hash"] == model_hash(model)
    assert meta["created"].endswith("+00:00")
    assert load_checkpoint_metadata(path / "model.json") == meta
    # the weights file holds the full state dict, buffers included, and nothing else
    state = load_file(str(path / "model.safetensors"))
    assert set(state) == set(model.state_dict())
    assert {"mean", "std"} <= set(state)


def test_load_accepts_the_json_or_weights_path_and_a_device(saved: tuple[Classifier, Path]) -> None:
    model, path = saved
    for target in (path, str(path), path / "model.json", path / "model.safetensors"):
        assert model_hash(load_checkpoint(target, device="cpu")) == model_hash(model)


def test_hash_is_stable_across_saves_and_sensitive_to_one_value(tmp_path: Path) -> None:
    model = _model("softmax")
    first = save_checkpoint(model, tmp_path / "a")
    second = save_checkpoint(load_checkpoint(first), tmp_path / "b")
    assert _sha256(first / "model.safetensors") == _sha256(second / "model.safetensors")
    meta_a = load_checkpoint_metadata(first)
    meta_b = load_checkpoint_metadata(second)
    assert meta_a["weights"] == meta_b["weights"]
    before = model_hash(model)
    with torch.no_grad():
        model.net[1].weight[0, 0] += 1e-6
    assert model_hash(model) != before


def test_save_overwrites_only_when_asked_and_keeps_no_temporary_files(tmp_path: Path) -> None:
    model = _model("softmax")
    path = save_checkpoint(model, tmp_path / "c", metrics={"accuracy": 0.1})
    first = model_hash(model)
    with torch.no_grad():
        model.net[1].bias.zero_()
    with pytest.raises(CheckpointExistsError, match=r"already holds a checkpoint; pass overwrite=True"):
        save_checkpoint(model, path, metrics={"accuracy": 0.2})
    assert model_hash(load_checkpoint(path)) == first  # untouched
    save_checkpoint(model, path, metrics={"accuracy": 0.2}, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    assert load_checkpoint_metadata(path)["metrics"] == {"accuracy": 0.2}
    assert model_hash(load_checkpoint(path)) == model_hash(model)


def test_double_precision_model_round_trips(tmp_path: Path) -> None:
    model = _model("mlp", hidden=(4,)).double()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "d"))
    assert next(loaded.parameters()).dtype == torch.float64
    assert model_hash(loaded) == model_hash(model)


def test_numpy_and_tensor_scalars_are_stored_as_numbers(tmp_path: Path) -> None:
    path = save_checkpoint(
        _model("softmax"), tmp_path / "e", metrics={"acc": np.float32(0.25), "n": torch.tensor(7)}, extra={"a": (1, 2)}
    )
    meta = load_checkpoint_metadata(path)
    assert meta["metrics"] == {"acc": 0.25, "n": 7}
    assert meta["extra"] == {"a": [1, 2]}


# --- save errors ------------------------------------------------------------------------------------------


def test_save_rejects_models_that_cannot_be_rebuilt(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="needs a Classifier"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path)  # type: ignore[arg-type]
    bare = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="create_model"):
        save_checkpoint(bare, tmp_path)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(_model("softmax"), tmp_path, metrics={"when": object()})
    with pytest.raises(ValueError, match="finite"):
        save_checkpoint(_model("softmax"), tmp_path, metrics={"loss": float("nan")})
    with pytest.raises(TypeError, match=r"seed must be an integer, got float 1\.5"):
        save_checkpoint(_model("softmax"), tmp_path, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an integer, got bool True"):
        save_checkpoint(_model("softmax"), tmp_path, seed=True)
    with pytest.raises(ValueError, match="seed must be an integer >= "):
        save_checkpoint(_model("softmax"), tmp_path, seed=2**64)
    assert not (tmp_path / "model.json").exists()


# --- load errors: missing, malformed, mismatched ----------------------------------------------------------


def test_missing_directory_and_files(saved: tuple[Classifier, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*missing"):
        load_checkpoint(path)
    (path / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json.*missing"):
        load_checkpoint(path)


def test_invalid_json_is_reported_with_the_file(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    (path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json.*is not valid JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("format"), "not an advlab checkpoint"),
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m["model"].pop("name"), "'model.name'"),
        (lambda m: m["model"]["config"].pop("in_shape"), "'model.config.in_shape'"),
        (lambda m: m.pop("bounds"), "'bounds'"),
        (lambda m: m.pop("normalization"), "'normalization'"),
        (lambda m: m["weights"].pop("content_hash"), "'weights'"),
    ],
)
def test_json_missing_fields(saved: tuple[Classifier, Path], edit: Any, message: str) -> None:
    _, path = saved
    _edit_json(path, edit)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_unknown_model_name_lists_valid_ones(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    _edit_json(path, lambda m: m["model"].update(name="vgg-19"), resign=True)
    with pytest.raises(ValueError, match=r"'vgg-19', which is not registered.*cnn-small"):
        load_checkpoint(path)


def test_config_with_different_shapes_is_rejected(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    _edit_json(path, lambda m: m["model"]["config"].update(hidden=[32]), resign=True)
    with pytest.raises(ValueError, match=r"shape mismatch for.*net.1.weight"):
        load_checkpoint(path)


def test_config_of_another_architecture_is_rejected(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    _edit_json(path, lambda m: m["model"].update(config={"in_shape": [1, 8, 8], "num_classes": 3, "hidden": [16, 16]}),
               resign=True)
    with pytest.raises(ValueError, match=r"missing tensors \['net.5.bias', 'net.5.weight'\]"):
        load_checkpoint(path)


def test_config_with_bad_hparams_is_rejected(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    _edit_json(path, lambda m: m["model"]["config"].update(hidden=[0]), resign=True)
    with pytest.raises(ValueError, match=r"cannot rebuild model 'mlp'.*hidden\[0\] must be an integer >= 1, got 0"):
        load_checkpoint(path)


# --- load errors: edited metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["model"]["config"].update(activation="tanh"),  # same weights, a different function
        lambda m: m["model"]["config"].update(pool="avg"),
        lambda m: m["model"].update(name="lenet5"),  # unchanged value: a no-op edit still loads
        lambda m: m.update(bounds=[0.0, 255.0]),
        lambda m: m.update(bounds=[0, 1.0]),  # the same bounds written differently: still an edit, refused
        lambda m: m["normalization"].update(mean=[0.5]),
        lambda m: m["normalization"].update(std=None),
        lambda m: m["weights"].update(num_parameters=1),
        lambda m: m.update(meta_hash="0" * 64),
        lambda m: m.update(format_version=2, extra_field=1),  # not a model field: loads
    ],
)
def test_an_edit_that_changes_the_model_is_refused(tmp_path: Path, edit: Any) -> None:
    """lenet5's activation and pooling change the function without changing one tensor shape: only the
    metadata hash tells the edited file from the saved one."""
    model = _model("lenet5")
    path = save_checkpoint(model, tmp_path / "lenet")
    before = json.loads((path / "model.json").read_text())
    _edit_json(path, edit)
    after = json.loads((path / "model.json").read_text())
    unchanged = metadata_hash(after) == metadata_hash(before) and after["meta_hash"] == before["meta_hash"]
    if unchanged:
        assert model_hash(load_checkpoint(path)) == model_hash(model)
        return
    with pytest.raises(ValueError, match=r"model\.json.*was edited or damaged.*re-save \(retrain\)") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="was edited or damaged"):
        load_checkpoint_metadata(path)


def test_edits_of_the_informational_fields_still_load(saved: tuple[Classifier, Path]) -> None:
    model, path = saved
    _edit_json(path, lambda m: m.update(dataset="mnist", seed=9, metrics={"note": 1}, extra={"by": "hand"},
                                        created="2020-01-01T00:00:00+00:00", versions={}))
    assert model_hash(load_checkpoint(path)) == model_hash(model)
    assert load_checkpoint_metadata(path)["extra"] == {"by": "hand"}


def test_a_version_1_checkpoint_still_loads_with_a_warning(saved: tuple[Classifier, Path]) -> None:
    """Checkpoints written before the metadata hash (format version 1) load, and say how to protect them."""
    model, path = saved

    def to_v1(meta: dict[str, Any]) -> None:
        meta.pop("meta_hash")
        meta["format_version"] = 1

    _edit_json(path, to_v1)
    with pytest.warns(UserWarning, match=r"format version 1.*not integrity-protected.*re-save"):
        loaded = load_checkpoint(path)
    assert model_hash(loaded) == model_hash(model)
    save_checkpoint(loaded, path, overwrite=True)  # the upgrade the warning names
    assert load_checkpoint_metadata(path)["format_version"] == 2


def test_a_version_2_file_without_its_hash_is_refused(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    _edit_json(path, lambda m: m.pop("meta_hash"))
    with pytest.raises(ValueError, match=r"lacks a valid 'meta_hash'"):
        load_checkpoint(path)


# --- load errors: tampering and hostile files -------------------------------------------------------------


def test_modified_bytes_fail_the_file_hash(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"does not match the sha256.*tampered"):
        load_checkpoint(path)


def test_swapped_tensor_with_updated_file_hash_fails_the_content_hash(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["net.1.weight"] = torch.zeros_like(state["net.1.weight"])
    save_file(state, str(weights))
    new_sha = _sha256(weights)
    # without updating the JSON the file hash catches it ...
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(path)
    # ... an edit of the file hash in the JSON is caught by the metadata hash ...
    _edit_json(path, lambda m: m["weights"].update(sha256=new_sha))
    with pytest.raises(ValueError, match=r"was edited or damaged"):
        load_checkpoint(path)
    # ... and a forger who also rewrites the metadata hash is caught by the content hash
    _edit_json(path, lambda m: m["weights"].update(sha256=new_sha), resign=True)
    with pytest.raises(ValueError, match=r"content hash.*modified"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this creates a marker file: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_disguised_as_safetensors_is_never_unpickled(
    saved: tuple[Classifier, Path], tmp_path: Path, writer: str
) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    # the payload works: unpickling it elsewhere does create its marker
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "marker"
    payload = {"net.1.weight": _Payload(marker)}
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, weights)
    # even with a matching file hash in the JSON it is refused, and never unpickled
    _edit_json(path, lambda m: m["weights"].update(sha256=_sha256(weights)), resign=True)
    kind = "a Python pickle" if writer == "pickle" else "a zip archive as written by torch.save"
    with pytest.raises(ValueError, match=f"is not a safetensors file \\({kind}.*never unpickled"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_or_garbage_weights_are_refused(saved: tuple[Classifier, Path]) -> None:
    _, path = saved
    weights = path / "model.safetensors"
    for content in (b"", b"\x00" * 4, b"\xff" * 64, weights.read_bytes()[:40]):
        weights.write_bytes(content)
        _edit_json(path, lambda m: m["weights"].update(sha256=_sha256(weights)), resign=True)
        with pytest.raises(ValueError, match="safetensors"):
            load_checkpoint(path)


def test_model_hash_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"nn.Module"):
        model_hash({"w": torch.zeros(1)})  # type: ignore[arg-type]
