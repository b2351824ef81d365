"""Hugging Face config classes for the LLaDA-family checkpoints.

They read the real ``config.json`` keys of LLaDA (``model_type="llada"``),
MMaDA (``"mmada"``) and Dynin-Omni (``"dynin_omni"``) and expose the names vLLM
reads (``hidden_size``, ``num_attention_heads``, ...) as aliases, so vLLM can
size the KV cache and build the model without ``trust_remote_code``.

Defaults are LLaDA-8B's values. The upstream ``ModelConfig`` dataclass has
GPT-2-like defaults instead, which is why every real checkpoint writes every
field; a checkpoint that leaves one out gets the LLaDA-8B value here.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

#: Every ``config.json`` field of LLaDA-8B-Instruct, with its value.
LLADA_8B_FIELDS: dict[str, Any] = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 4096,
    "embedding_dropout": 0.0,
    "embedding_size": 126464,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 126336,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 12288,
    "mlp_ratio": 4,
    "multi_query_attention": None,
    "n_heads": 32,
    "n_kv_heads": 32,
    "n_layers": 32,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "use_cache": False,
    "vocab_size": 126464,
    "weight_tying": False,
}

#: Extra fields MMaDA and Dynin-Omni keep when present (see their configs).
MMADA_EXTRA_FIELDS: dict[str, Any] = {
    "llm_vocab_size": 126464,
    "llm_model_path": None,
    "codebook_size": 8192,
    "num_vq_tokens": 1024,
    "num_new_special_tokens": 0,
    "gradient_checkpointing": None,
    "new_vocab_size": None,
}

DYNIN_EXTRA_FIELDS: dict[str, Any] = {
    **MMADA_EXTRA_FIELDS,
    "vid_merge": False,
    "vid_merge_stride": 2,
}

#: Fields whose non-default value selects a network this plugin does not build.
_UNSUPPORTED_VALUES: dict[str, Any] = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "rope": True,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "bias_for_layer_norm": False,
}


#: ``model_type`` of the checkpoints that take images (``multimodal.processor``).
IMAGE_MODEL_TYPES: tuple[str, ...] = ("dynin_omni",)


class LLaDAConfig(PretrainedConfig):
    """Config of ``LLaDAModelLM`` checkpoints (``GSAI-ML/LLaDA-8B-Instruct``)."""

    model_type = "llada"
    _extra_fields = {}  # extra config.json fields of this family

    # vLLM and transformers read the Llama-style names; these alias the
    # OLMo-style names LLaDA stores.
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(self, **kwargs: Any) -> None:
        for key, default in {**LLADA_8B_FIELDS, **self._extra_fields}.items():
            setattr(self, key, kwargs.pop(key, default))
        self.tie_word_embeddings = bool(
            kwargs.pop("tie_word_embeddings", self.weight_tying)
        )
        self.pad_token_id = kwargs.pop("pad_token_id", 126081)
        self.eos_token_id = kwargs.pop("eos_token_id", 126081)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        super().__init__(**kwargs)

    # --- names vLLM reads -------------------------------------------------
    @property
    def num_key_value_heads(self) -> int:
        """KV heads; LLaDA writes ``None`` for plain multi-head attention."""
        if self.multi_query_attention:
            return 1
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        """Per-head width (``d_model / n_heads``; LLaDA has no separate field)."""
        return self.d_model // self.n_heads

    @property
    def hidden_act(self) -> str:
        return self.activation_type

    @property
    def matrix_vocab_size(self) -> int:
        """Rows of the embedding and LM-head matrices (``embedding_size``)."""
        return int(self.embedding_size or self.vocab_size)

    def check_supported(self) -> None:
        """Raise ``ValueError`` naming any field selecting an unbuilt network."""
        bad = {
            key: getattr(self, key)
            for key, wanted in _UNSUPPORTED_VALUES.items()
            if getattr(self, key) != wanted
        }
        if bad:
            fields = ", ".join(f"{k}={v!r}" for k, v in sorted(bad.items()))
            raise ValueError(
                f"{type(self).__name__}: unsupported config.json value(s) {fields}; "
                "dynin-vllm builds the LLaDA 'llama' block (RMSNorm, RoPE, SwiGLU, "
                "no biases)."
            )
        if self.embedding_size and self.embedding_size < self.vocab_size:
            raise ValueError(
                f"{type(self).__name__}: embedding_size={self.embedding_size} is "
                f"smaller than vocab_size={self.vocab_size}."
            )


class MMadaConfig(LLaDAConfig):
    """Config of ``MMadaModelLM`` checkpoints (``Gen-Verse/MMaDA-8B-*``)."""

    model_type = "mmada"
    _extra_fields = MMADA_EXTRA_FIELDS

    # transformers builds a dataclass __init__ for subclasses without one.
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class DyninOmniConfig(LLaDAConfig):
    """Config of ``DyninOmniModelLM`` checkpoints (``snu-aidas/Dynin-Omni``)."""

    model_type = "dynin_omni"
    _extra_fields = DYNIN_EXTRA_FIELDS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


CONFIG_CLASSES: tuple[type[LLaDAConfig], ...] = (
    LLaDAConfig,
    MMadaConfig,
    DyninOmniConfig,
)


def register_configs() -> None:
    """Register the config classes with transformers and vLLM (idempotent)."""
    from transformers import AutoConfig

    from dynin_vllm import vllm_private

    for config_cls in CONFIG_CLASSES:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        vllm_private.register_hf_config(config_cls.model_type, config_cls)
