"""advlab.keep_freed_memory: glibc malloc keeps freed blocks in the process; the ``advlab`` command applies it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import advlab
from advlab import _allocator
from advlab.cli import main as cli_main

GLIBC = _allocator._glibc() is not None

# Run in a fresh interpreter (mallopt is process-wide): frees a 64 MiB block and reports how much free memory
# the heap holds afterwards (mallinfo2, glibc >= 2.33) and whether the block was mapped on its own (hblkhd).
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from advlab._allocator import keep_freed_memory
    applied = [keep_freed_memory(), keep_freed_memory()] if sys.argv[1] == "on" else []
    libc = ctypes.CDLL("libc.so.6")
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblkhd >= 64 << 20
    libc.free(block)
    print(json.dumps({"applied": applied, "mapped": mapped, "free_mib": libc.mallinfo2().fordblks >> 20}))
""")


def _probe(mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in _allocator.MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True,
                         timeout=60).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_keep_freed_memory_keeps_a_freed_block_in_the_heap() -> None:
    try:
        before = _probe("off")
    except subprocess.CalledProcessError as err:  # glibc < 2.33 has no mallinfo2; any other failure fails
        if "mallinfo2" not in err.stderr:
            raise
        pytest.skip(f"mallinfo2 unavailable: {err.stderr[-200:]}")
    assert before["mapped"] and before["free_mib"] < 64  # the default: mapped on its own, unmapped when freed
    after = _probe("on")
    assert after["applied"] == [True, True]  # applied; a second call is a no-op that reports it in effect
    assert not after["mapped"] and after["free_mib"] >= 64  # served from the heap and kept there once freed


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_allocator, "_applied", False)
    monkeypatch.setattr(_allocator.sys, "platform", "darwin")
    assert _allocator.keep_freed_memory() is False


def test_keep_freed_memory_leaves_a_user_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_allocator, "_applied", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    calls: list[int] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: calls.append(1))
    assert _allocator.keep_freed_memory() is False
    assert not calls


def test_keep_freed_memory_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_allocator, "_applied", False)
    for k in _allocator.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)

    def broken() -> None:
        raise RuntimeError("no C library")

    monkeypatch.setattr(_allocator, "_glibc", broken)
    assert _allocator.keep_freed_memory() is False


def test_exported_at_top_level() -> None:
    assert advlab.keep_freed_memory is _allocator.keep_freed_memory
    assert "keep_freed_memory" in dir(advlab)


@pytest.mark.parametrize(("opt_out", "expected"), [(None, 1), ("1", 0)])
def test_cli_applies_it_unless_opted_out(monkeypatch: pytest.MonkeyPatch, opt_out: str | None, expected: int) -> None:
    calls: list[int] = []

    def record() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(cli_main, "keep_freed_memory", record)
    if opt_out is None:
        monkeypatch.delenv("ADVLAB_DEFAULT_MALLOC", raising=False)
    else:
        monkeypatch.setenv("ADVLAB_DEFAULT_MALLOC", opt_out)
    monkeypatch.setattr(sys, "argv", ["advlab", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main()
    assert exit_info.value.code == 0
    assert len(calls) == expected
