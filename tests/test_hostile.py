"""Hostile input, fuzzed: whatever values a user types into ``advlab attack``'s options, the command either
runs or says in one line what is wrong — never a traceback, never a file written where it should not be.

The catalogue of named cases lives beside this file (``test_cli_errors.py``: every command × bad paths and
values; ``test_attacks_validation.py``: every attack × bad tensors; ``test_data.py``: every loader × corrupt
files; ``test_checkpoint.py`` and ``test_file_safety.py``: checkpoints × edits, pickles and kills); this file
adds a property-based fuzz over the option values."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advlab.attacks import attack_spec, list_attacks
from advlab.cli.main import main
from advlab.threat import NORMS

pytestmark = pytest.mark.usefixtures("one_thread")

_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from advlab.train import Recipe, save_run, train_model

    run = train_model("softmax", "digits", Recipe(epochs=1, lr=1e-2, batch_size=128), seed=0, threads=1)
    return save_run(run, tmp_path_factory.mktemp("hostile") / "ck")


def junk() -> st.SearchStrategy[str]:
    return st.sampled_from(["", " ", "abc", "1e999", "-", "--", "0x10", "None", "nan", "inf", "-inf", "1,2",
                            "../x", "\u00e9", "1.5.2", "true"])


def number_text(lo: int, hi: int) -> st.SearchStrategy[str]:
    """Integers in range (valid), out of range, floats and junk, as the user would type them."""
    return st.one_of(st.integers(lo, hi).map(str), st.integers(-(2**70), 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), junk())


OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--eps": st.one_of(st.floats(0, 0.5).map(repr), st.floats(allow_nan=True, allow_infinity=True).map(repr), junk()),
    "--steps": number_text(1, 3),
    "--n": number_text(1, 6),
    "--batch-size": number_text(1, 8),
    "--seed": number_text(0, 2**32),
    "--norm": st.one_of(st.sampled_from(NORMS), junk()),
    "--targeted": st.one_of(st.sampled_from(["least-likely", "random", "3", "12", "-1"]), junk()),
    "--loss": st.one_of(st.sampled_from(["ce", "margin", "dlr"]), junk()),
    "--device": st.one_of(st.sampled_from(["cpu", "auto", "meta", "cuda", "cuda:7", "mps"]), junk()),
}
# Options a run must have to stay small when every value happens to be valid.
SMALL = {"--n": "4", "--steps": "2"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=st.sampled_from(list_attacks()), chosen=st.dictionaries(st.sampled_from(sorted(OPTIONS)),
                                                                      st.just(""), max_size=5), data=st.data())
def test_fuzzed_attack_options_never_show_a_traceback(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], attack: str, chosen: dict[str, str],
    data: st.DataObject,
) -> None:
    values = {k: data.draw(OPTIONS[k], label=k) for k in sorted(chosen)}
    if "--steps" in values and "steps" not in attack_spec(attack).defaults():
        values.pop("--steps")  # leaves the refusal of an option an attack does not take to the named cases
    for key, small in SMALL.items():  # a valid but large value would only make the run slow
        if key in values and values[key].isdigit() and int(values[key]) > int(small):
            values[key] = small
    values.setdefault("--eps", "0.1")
    values.setdefault("--n", SMALL["--n"])
    if "steps" in attack_spec(attack).defaults():
        values.setdefault("--steps", SMALL["--steps"])
    if "max_queries" in attack_spec(attack).defaults():  # a black-box attack: a small query budget
        values.setdefault("--max-queries", "50")
    out = tmp_path / f"fuzz-{next(_COUNTER)}.json"
    args: list[Any] = ["attack", "--checkpoint", checkpoint, "--attack", attack, "--json", out, "--no-progress"]
    for key, value in values.items():
        args += [f"{key}={value}"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    text = "".join(capsys.readouterr())
    code = info.value.code if isinstance(info.value.code, int) else (0 if info.value.code is None else 1)
    assert "Traceback" not in text, text
    assert code in (0, 1, 2, 130), (code, text)
    if code == 0:
        assert out.is_file() and "results:" in text
    else:
        assert not out.exists(), "a failed run must not leave its output behind"
        assert "rror" in text, text  # "Error: ..." (click) or "advlab: error: ..." (the boundary)
        assert "this is a bug" not in text, text  # a user's value is never reported as a bug
    assert not any(p.name.startswith(".") and p.name != out.name for p in tmp_path.iterdir()), "temp files left"
    torch.set_num_threads(1)  # a fuzzed run may not leave the thread setting changed
