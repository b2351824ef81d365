"""Batch the codec work of concurrent requests.

Each finished request hands its items (an image's codes, an utterance's
units) to a :class:`DecodeBatcher`, which runs one decode at a time off the
event loop. Whatever arrives while a decode runs waits and goes into the next
one, one batch per key (MAGVIT-v2 decodes a ``[B, N]`` batch of one grid, so
images batch by grid), at most ``max_batch`` items: under load the codec sees
large batches, and a lone request waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any

#: ``decode(items, key)``: one result per item, in order.
DecodeFn = Callable[[list[Any], Any], Sequence[Any]]


class DecodeBatcher:
    """Merges concurrent ``decode`` calls into batched ``decode_fn`` calls."""

    def __init__(self, decode_fn: DecodeFn, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._decode_fn = decode_fn
        self.max_batch = max_batch
        self._pending: dict[Hashable, list[tuple[Any, asyncio.Future]]] = {}
        self._worker: asyncio.Task | None = None

    async def decode(self, items: Sequence[Any], key: Hashable = None) -> list[Any]:
        """Decode ``items`` (all of ``key``), batched with whatever else of
        ``key`` is waiting for the codec."""
        loop = asyncio.get_running_loop()
        futures = []
        queue = self._pending.setdefault(key, [])
        for item in items:
            future = loop.create_future()
            queue.append((item, future))
            futures.append(future)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._pending:
            key, queue = next(iter(self._pending.items()))
            batch, rest = queue[: self.max_batch], queue[self.max_batch :]
            if rest:
                self._pending[key] = rest
            else:
                del self._pending[key]
            try:
                results = await asyncio.to_thread(
                    self._decode_fn, [item for item, _ in batch], key
                )
            except Exception as exc:  # every waiter gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # its request may have been cancelled
                    future.set_result(result)
