"""The on-disk tensor layout of LLaDA / MMaDA / Dynin-Omni checkpoints.

All three keep LLaDA's module tree (``LLaDAModelLM.model.transformer``); MMaDA
and Dynin-Omni only grow the two vocabulary matrices. Beware the name clash:
``blocks.N.ff_out`` is the MLP down projection, ``transformer.ff_out`` the LM
head, and ``ff_proj`` is the *gate* of the SwiGLU MLP.
"""

from __future__ import annotations

from typing import Any

PREFIX = "model.transformer."

#: Upstream tensors the loader skips on purpose. Dynin-Omni's optional
#: ``video_token_merger`` exists only when ``vid_merge`` is enabled, and no
#: inference path uses it.
IGNORED_PREFIXES: tuple[str, ...] = ("model.video_token_merger.", "video_token_merger.")


def checkpoint_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a checkpoint for ``config``, with its full shape."""
    d = config.d_model
    head_dim = d // config.n_heads
    kv = config.num_key_value_heads * head_dim
    ff = config.mlp_hidden_size
    vocab = config.matrix_vocab_size
    shapes: dict[str, tuple[int, ...]] = {f"{PREFIX}wte.weight": (vocab, d)}
    for i in range(config.n_layers):
        block = f"{PREFIX}blocks.{i}."
        shapes.update(
            {
                f"{block}attn_norm.weight": (d,),
                f"{block}q_proj.weight": (d, d),
                f"{block}k_proj.weight": (kv, d),
                f"{block}v_proj.weight": (kv, d),
                f"{block}attn_out.weight": (d, d),
                f"{block}ff_norm.weight": (d,),
                f"{block}ff_proj.weight": (ff, d),
                f"{block}up_proj.weight": (ff, d),
                f"{block}ff_out.weight": (d, ff),
            }
        )
    shapes[f"{PREFIX}ln_f.weight"] = (d,)
    if not config.weight_tying:
        shapes[f"{PREFIX}ff_out.weight"] = (vocab, d)
    return shapes
