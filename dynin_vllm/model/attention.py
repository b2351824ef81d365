"""Bidirectional attention over vLLM's paged KV cache.

vLLM decoder layers attend causally: the model runner builds attention metadata
with ``causal=True``. Masked-diffusion models attend bidirectionally, so every
attention layer of our models gets a backend whose metadata builder switches
``causal`` off. With ``causal=False`` each scheduled query token attends to all
of its request's keys: the cached prefix plus the whole scheduled chunk, which is
exactly a bidirectional block over the KV cache.

The wrapper is per backend class, so it works on whatever backend the platform
selected: CPU_ATTN on CPU, FlashAttention or Triton attention on CUDA.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from dynin_vllm import vllm_private


@functools.cache
def non_causal_backend(base: type) -> type:
    """A subclass of attention backend ``base`` that never applies a causal mask."""
    if not base.supports_non_causal():
        raise ValueError(
            f"Attention backend {base.get_name()} cannot run non-causal attention "
            "over paged KV, which masked-diffusion models need. Select one that "
            "can (CPU_ATTN, FLASH_ATTN, TRITON_ATTN or FLEX_ATTENTION) with "
            "--attention-backend."
        )
    base_builder = base.get_builder_cls()

    def build(
        self: Any, common_prefix_len: int, common_attn_metadata: Any, *args, **kw
    ) -> Any:
        bidirectional = dataclasses.replace(common_attn_metadata, causal=False)
        return base_builder.build(self, common_prefix_len, bidirectional, *args, **kw)

    builder = type(
        f"NonCausal{base_builder.__name__}", (base_builder,), {"build": build}
    )
    backend = type(
        f"NonCausal{base.__name__}",
        (base,),
        {"get_builder_cls": staticmethod(lambda: builder), "__module__": __name__},
    )
    builder.__module__ = __name__
    return backend


def make_bidirectional(attn_layer: Any) -> None:
    """Swap a vLLM ``Attention`` layer's backend for its non-causal twin."""
    if not isinstance(attn_layer, vllm_private.attention_layer_cls()):
        raise TypeError(f"expected a vLLM Attention layer, got {type(attn_layer)}")
    attn_layer.attn_backend = non_causal_backend(attn_layer.attn_backend)
