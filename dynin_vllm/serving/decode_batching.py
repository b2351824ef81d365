"""Batch the image decodes of concurrent requests.

Each finished image request hands its codes to :class:`DecodeBatcher`, which
runs one decode at a time off the event loop. Whatever arrives while a decode
runs waits and goes into the next one, one batch per grid (the decoder takes
a ``[B, N]`` batch of one grid), at most ``max_batch`` images: under load the
decoder sees large batches, and a lone request waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

#: ``decode(codes, grid)``: ``len(codes)`` decoded images of ``grid``.
DecodeFn = Callable[[list[Any], tuple[int, int]], Sequence[Any]]


class DecodeBatcher:
    """Merges concurrent ``decode`` calls into batched ``decode_fn`` calls."""

    def __init__(self, decode_fn: DecodeFn, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._decode_fn = decode_fn
        self.max_batch = max_batch
        self._pending: dict[tuple[int, int], list[tuple[Any, asyncio.Future]]] = {}
        self._worker: asyncio.Task | None = None

    async def decode(self, codes: Sequence[Any], grid: tuple[int, int]) -> list[Any]:
        """Decode ``codes`` (one entry per image) of ``grid``, batched with
        whatever else is waiting for the decoder."""
        loop = asyncio.get_running_loop()
        futures = []
        queue = self._pending.setdefault(tuple(grid), [])
        for item in codes:
            future = loop.create_future()
            queue.append((item, future))
            futures.append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._pending:
            grid, queue = next(iter(self._pending.items()))
            batch, rest = queue[: self.max_batch], queue[self.max_batch :]
            if rest:
                self._pending[grid] = rest
            else:
                del self._pending[grid]
            try:
                images = await asyncio.to_thread(
                    self._decode_fn, [item for item, _ in batch], grid
                )
            except Exception as exc:  # every waiter gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), image in zip(batch, images, strict=True):
                if not future.done():  # its request may have been cancelled
                    future.set_result(image)
