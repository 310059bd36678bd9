"""Provenance of a result: the versions of advlab and the libraries it was computed with.

Every record advlab writes (checkpoints, attack and evaluation results) states these, so a number can be
traced to the code that produced it.
"""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["versions"]


def versions() -> dict[str, str]:
    """The versions of advlab, torch, numpy and Python, as strings.

    advlab's version comes from the installed distribution's metadata, falling back to
    ``advlab.__version__`` when the package runs from a source tree that was not installed.

    Example:
        >>> sorted(versions())
        ['advlab', 'numpy', 'python', 'torch']
    """
    import numpy as np
    import torch

    try:
        advlab_version = metadata.version("advlab")
    except metadata.PackageNotFoundError:
        from advlab import __version__ as advlab_version
    return {
        "advlab": advlab_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
