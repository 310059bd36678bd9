"""TOML reading: the standard library's ``tomllib`` (Python >= 3.11), else the ``tomli`` package it came from."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]
