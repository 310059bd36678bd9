"""Per-example randomness of an attack call: every random number is drawn once for the whole call, with the
user's generator, and each chunk takes its own rows, so that example ``i`` receives the same numbers whatever
the batch size (see :meth:`~advlab.attacks.AttackContext.random`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advlab.threat import LpBall

# Draws of random numbers kept in memory for the chunks still to come, at most this many times the bytes of
# the inputs (and at least _CACHE_FLOOR bytes); the others are drawn again, from their recorded state.
_CACHE_FACTOR = 2
_CACHE_FLOOR = 64 << 20

Draw = Callable[[Tensor, torch.Generator], Tensor]


class RandomDraw:
    """The random numbers of one draw for the current chunk's examples (see :meth:`AttackContext.random`)."""

    def __init__(self, stream: RandomStream, entry: _Entry, rows: slice) -> None:
        self._stream, self._entry, self._rows = stream, entry, rows

    def rows(self, index: Tensor | None = None) -> Tensor:
        """The draw for the chunk's examples (``index``: a subset of them, positions within the chunk), as
        ``(replicas * n, ...)`` with replica-major rows (the layout of :func:`replicate`). A fresh tensor."""
        full = self._stream.materialise(self._entry)
        m, n = self._entry.replicas, self._stream.n
        if index is None and m == 1:
            return full[self._rows].clone()
        start, stop = self._rows.start, self._rows.stop
        rows = torch.arange(start, stop, device=full.device) if index is None else index.to(full.device) + start
        if m > 1:
            rows = (torch.arange(m, device=full.device)[:, None] * n + rows[None, :]).flatten()
        return full.index_select(0, rows)


class _Entry:
    def __init__(self, draw: Draw, replicas: int, state: Tensor, value: Tensor | None) -> None:
        self.draw, self.replicas, self.state, self.value = draw, replicas, state, value


class RandomStream:
    """Every random number of one attack call, drawn for all ``N`` examples at once.

    The ``k``-th draw a kernel requests in a chunk is the ``k``-th draw of the call: made once, with the
    user's generator, for every example (as a run without chunks would make it), and each chunk takes its
    own rows. So example ``i`` receives the same numbers whatever the batch size, and a run without chunks
    consumes the generator exactly as a plain draw over the whole batch would. A draw is kept in memory
    for the later chunks while the cache allows (see ``_CACHE_FACTOR``), else drawn again from the
    generator state recorded before it.
    """

    def __init__(self, x: Tensor, generator: torch.Generator | None) -> None:
        self.n = x.shape[0]
        self._like = x[:1].detach()
        self._generator = generator
        self._entries: list[_Entry] = []
        self._cursor = 0
        self._chunks_begun = 0
        self._cache_left = max(_CACHE_FLOOR, _CACHE_FACTOR * x.numel() * x.element_size())

    def begin_chunk(self) -> None:
        if self._chunks_begun and self._cursor != len(self._entries):
            raise RuntimeError(
                f"a chunk made {self._cursor} random draws where the first made {len(self._entries)}: a kernel "
                f"must request the same draws in every chunk, whatever its data"
            )
        self._chunks_begun += 1
        self._cursor = 0

    def _generator_for_call(self) -> torch.Generator:
        if self._generator is None:  # no seed given: one from the global RNG, so torch.manual_seed reproduces
            seed = int(torch.randint(0, 2**62, (1,)).item())
            self._generator = torch.Generator(device=self._like.device).manual_seed(seed)
        return self._generator

    def request(self, draw: Draw, replicas: int, rows: slice) -> RandomDraw:
        if self._cursor < len(self._entries):
            entry = self._entries[self._cursor]
            if entry.replicas != replicas:
                raise RuntimeError("a kernel requested its random draws in a different order in another chunk")
        elif self._chunks_begun > 1:
            raise RuntimeError(
                "a kernel requested a random draw in a later chunk that the first chunk did not make: draws must "
                "not depend on the data (request every draw, e.g. every restart's start, up front)"
            )
        else:
            g = self._generator_for_call()
            state = g.get_state()
            drawn = draw(self._full_like(replicas), g)
            size = drawn.numel() * drawn.element_size()
            keep = size <= self._cache_left  # else drawn again, from ``state``, when a chunk needs it
            self._cache_left -= size if keep else 0
            entry = _Entry(draw, replicas, state, drawn if keep else None)
            self._entries.append(entry)
        self._cursor += 1
        return RandomDraw(self, entry, rows)

    def _full_like(self, replicas: int) -> Tensor:
        # shape, dtype and device of the whole call's (replicated) batch, without allocating it
        return self._like.expand(replicas * self.n, *self._like.shape[1:])

    def materialise(self, entry: _Entry) -> Tensor:
        if entry.value is not None:
            return entry.value
        assert self._generator is not None
        replay = torch.Generator(device=self._generator.device)
        replay.set_state(entry.state)
        return entry.draw(self._full_like(entry.replicas), replay)


class PerExampleRandomness:
    """The randomness of :class:`~advlab.attacks.AttackContext`: draws made per example for the whole call,
    each chunk taking its own rows (see :meth:`random`)."""

    def __init__(self, generator: torch.Generator | None) -> None:
        # The user's generator. Kernels draw through :meth:`random` / :meth:`random_init`, which give each
        # example the same numbers whatever the batch size; drawing from ``generator`` directly does not.
        self.generator = generator
        self._stream: RandomStream | None = None
        self._rows = slice(0, 0)

    def begin_call(self, x: Tensor) -> None:
        """Starts an attack call on the whole batch ``x`` (before its first chunk)."""
        self._stream = RandomStream(x, self.generator)

    def _begin_random_chunk(self, x: Tensor, rows: slice) -> None:
        """The draws of a chunk with clean input ``x``, rows ``rows`` of the call's batch, start here."""
        self._rows = rows
        if self._stream is None:
            self.begin_call(x)
        assert self._stream is not None
        self._stream.begin_chunk()

    def random(self, draw: Draw, replicas: int = 1) -> RandomDraw:
        """The next random draw of this chunk: ``draw(like, generator)`` makes it for the whole call at once,
        ``like`` shaped as ``replicas`` copies of the call's batch (restart-major), and the result hands out
        the current chunk's rows (:meth:`RandomDraw.rows`).

        Randomness is thereby drawn per example: example ``i`` gets the same numbers whatever the batch size,
        and a run without chunks draws exactly what ``draw(x_replicated, generator)`` would. Every chunk must
        request the same draws in the same order, whatever its data (request all of them up front)."""
        if self._stream is None:
            raise RuntimeError("random draws are made once a chunk has begun")
        return self._stream.request(draw, replicas, self._rows)

    def random_init(self, ball: LpBall, replicas: int = 1, *, radial: bool = False) -> RandomDraw:
        """Random starts in ``ball`` for the current chunk (see :meth:`LpBall.random_init` and :meth:`random`)."""
        return self.random(lambda like, g: ball.random_init(like, g, radial=radial), replicas)
