"""Where a field of a TOML file is written: the line of every key and table, so that an error in a value
names the line it is on (``tomllib`` gives values, not positions)."""

from __future__ import annotations

import re
from collections.abc import Sequence

Path_ = tuple[str | int, ...]

_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*(?P<name>[^\]]+?)\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[\s*(?P<name>[^\[\]]+?)\s*\]")
_NAME = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*(?P<key>{_NAME}(?:\s*\.\s*{_NAME})*)\s*=")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[:1] in "\"'" else p for p in _PART.findall(dotted)]


def format_path(path: Sequence[str | int]) -> str:
    """``("model", 1, "defense")`` -> ``"model[1].defense"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class LineIndex:
    """The 1-based line of every table header and key of a TOML text, keyed by its path: ``("sweep",)``,
    ``("model", 1)``, ``("model", 1, "defense")``; arrays of tables count from 0 in the order written.

    Multi-line strings holding lines that look like ``key = value`` can mislead it; it only serves to
    point at lines in error messages.

    Example:
        >>> idx = LineIndex("[sweep]\\nseed = 0\\n[[model]]\\nname = 'a'\\n[[model]]\\nname = 'b'\\n")
        >>> idx.line(("model", 1, "name")), idx.line(("model", 1, "missing")), idx.line(("sweep", "seed"))
        (6, 5, 2)
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path_, int] = {}
        counts: dict[tuple[str, ...], int] = {}
        current: Path_ = ()
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_multiline:
                if quotes % 2 == 1:
                    in_multiline = False
                continue
            if (m := _ARRAY_HEADER.match(line)) is not None:
                names = tuple(_parts(m["name"]))
                counts[names] = counts.get(names, 0) + 1
                for key in [k for k in counts if len(k) > len(names) and k[: len(names)] == names]:
                    del counts[key]  # a new element starts its nested arrays afresh
                current = self._resolve(names, counts)
                self.lines.setdefault(current, number)
                self.lines.setdefault(current[:-1], number)  # the array itself: its first element
            elif (m := _TABLE_HEADER.match(line)) is not None:
                current = self._resolve(tuple(_parts(m["name"])), counts)
                self.lines.setdefault(current, number)
            elif (m := _KEY.match(line)) is not None:
                path = current
                for part in _parts(m["key"]):
                    path = (*path, part)
                    self.lines.setdefault(path, number)
            if quotes % 2 == 1:
                in_multiline = True

    @staticmethod
    def _resolve(names: tuple[str, ...], counts: dict[tuple[str, ...], int]) -> Path_:
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            if names[: i + 1] in counts:
                path.append(counts[names[: i + 1]] - 1)
        return tuple(path)

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, else of its closest written ancestor (``None`` when none is written)."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None
