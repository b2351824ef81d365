"""Per-request tensors indexed by slot, kept across steps.

Each request the denoiser steps owns a slot (a row) in a few persistent
tensors, as DiffusionGemma keeps its requests' state: its answer canvas and
the parameters its scoring and selection read every step (seed, temperature,
guidance scale, threshold, factor and the sampler's flags). A step gathers
them for all its requests with one index, instead of rebuilding tensors from
per-request Python lists.

A request's ``RequestState.answer`` is a view of its canvas row, so the
state's own methods and a step's batched writes see the same tokens. Growing
a table (more slots, longer answers) re-points every view.
"""

from __future__ import annotations

import torch

from dynin_vllm.diffusion.state import RequestState


class SlotTable:
    """Slots of the requests a :class:`~dynin_vllm.diffusion.denoiser.Denoiser`
    steps, and their per-request tensors (on the CPU)."""

    def __init__(self, capacity: int = 64, width: int = 256) -> None:
        self.answers = torch.zeros(capacity, width, dtype=torch.int64)
        #: The temperature a step scores with: MaskGIT draws its candidates
        #: at 1 (its temperature scales the re-masking noise); 0 is greedy.
        self.temperature = torch.zeros(capacity, dtype=torch.float32)
        self.seed = torch.zeros(capacity, dtype=torch.int64)
        self.cfg_scale = torch.zeros(capacity, dtype=torch.float32)
        self.threshold = torch.zeros(capacity, dtype=torch.float64)
        self.factor = torch.zeros(capacity, dtype=torch.float64)
        self.maskgit = torch.zeros(capacity, dtype=torch.bool)
        self.random_remasking = torch.zeros(capacity, dtype=torch.bool)
        self._owners: dict[int, RequestState] = {}
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return self.answers.shape[0]

    @property
    def width(self) -> int:
        return self.answers.shape[1]

    def add(self, state: RequestState) -> None:
        """Give ``state`` a slot: its answer becomes a view of the slot's row."""
        length = state.answer.numel()
        if not self._free or length > self.width:
            self._grow(
                self.capacity * (1 if self._free else 2), max(self.width, length)
            )
        slot = self._free.pop()
        self.answers[slot, :length] = state.answer
        state.answer = self.answers[slot, :length]
        state.slot = slot
        params = state.params
        temperature = state.temperature
        if state.uses_maskgit:
            temperature = 1.0 if temperature > 0 else 0.0
        self.temperature[slot] = temperature
        self.seed[slot] = state.seed
        self.cfg_scale[slot] = params.cfg_scale
        self.threshold[slot] = params.threshold or 0.0
        self.factor[slot] = params.factor or 0.0
        self.maskgit[slot] = state.uses_maskgit
        self.random_remasking[slot] = params.remasking == "random"
        self._owners[slot] = state

    def remove(self, state: RequestState) -> None:
        """Free ``state``'s slot; its answer keeps its tokens in a copy."""
        slot = state.slot
        if slot < 0 or self._owners.get(slot) is not state:
            return
        del self._owners[slot]
        state.answer = state.answer.clone()
        state.slot = -1
        self._free.append(slot)

    def _grow(self, capacity: int, width: int) -> None:
        old = self.capacity
        for name in (
            "answers",
            "temperature",
            "seed",
            "cfg_scale",
            "threshold",
            "factor",
            "maskgit",
            "random_remasking",
        ):
            tensor = getattr(self, name)
            shape = (capacity, width) if tensor.dim() == 2 else (capacity,)
            grown = torch.zeros(shape, dtype=tensor.dtype)
            if tensor.dim() == 2:
                grown[:old, : tensor.shape[1]] = tensor
            else:
                grown[:old] = tensor
            setattr(self, name, grown)
        for slot, state in self._owners.items():
            state.answer = self.answers[slot, : state.answer.numel()]
        self._free = list(range(capacity - 1, old - 1, -1)) + self._free
