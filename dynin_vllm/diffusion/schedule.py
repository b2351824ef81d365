"""Block layout and per-step transfer counts of block-wise masked denoising."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


def transfer_counts(num_masked: int, steps: int) -> list[int]:
    """LLaDA's ``get_num_transfer_tokens`` for one block.

    ``num_masked`` tokens spread over ``steps`` steps as evenly as possible,
    the remainder on the earliest steps: 10 masks over 4 steps -> [3, 3, 2, 2].
    Trailing zero steps (more steps than masks) are dropped: they commit nothing.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base, rem = divmod(num_masked, steps)
    counts = [base + 1] * rem + [base] * (steps - rem)
    while counts and counts[-1] == 0:
        counts.pop()
    return counts


@dataclass(frozen=True)
class BlockLayout:
    """How an answer of ``answer_len`` tokens splits into denoising blocks."""

    answer_len: int
    block_length: int
    steps: int | None = None

    @functools.cached_property
    def effective_block_length(self) -> int:
        return max(1, min(self.block_length, self.answer_len))

    @functools.cached_property
    def num_blocks(self) -> int:
        return math.ceil(self.answer_len / self.effective_block_length)

    @functools.cached_property
    def steps_per_block(self) -> int:
        """``max(1, steps // num_blocks)``; one token per step by default."""
        steps = self.answer_len if self.steps is None else self.steps
        return max(1, steps // self.num_blocks)

    @functools.cached_property
    def step_stride(self) -> int:
        """Bound on the steps of one block: numbers the noise draws per block."""
        return max(self.steps_per_block, self.effective_block_length)

    def bounds(self, block: int) -> tuple[int, int]:
        """Answer-relative ``[start, end)`` of ``block``."""
        start = block * self.effective_block_length
        return start, min(start + self.effective_block_length, self.answer_len)
