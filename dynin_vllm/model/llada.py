"""LLaDA / MMaDA / Dynin-Omni backbone built from vLLM layers.

A Llama-shaped transformer (RMSNorm, NeoX RoPE, SwiGLU, no biases, untied LM
head) whose attention is bidirectional. The module tree mirrors the Hugging
Face one (``model.transformer.{wte,blocks.N.*,ln_f,ff_out}``) so checkpoint
names map one to one, except for the fused projections: ``q/k/v_proj`` load
into ``qkv_proj`` and ``ff_proj`` (the gate) / ``up_proj`` into
``gate_up_proj``.

Loading follows vLLM's Llama idioms: a :class:`WeightsMapper` renames the
stacked projections (the fused layers' own ``load_weights`` place each shard),
:class:`AutoWeightsLoader` walks the module tree, and ``packed_modules_mapping``
tells LoRA and the quantization configs which checkpoint projections make up a
fused layer. Around that, the strict layout check of ``load_weights`` names
every unknown, missing or mis-shaped tensor at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
)
from vllm.model_executor.models.interfaces import (
    SupportsLoRA,
    SupportsMultiModal,
    SupportsQuant,
)
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from dynin_vllm import vllm_private
from dynin_vllm.configs import IMAGE_MODEL_TYPES, LLaDAConfig
from dynin_vllm.model.attention import make_bidirectional
from dynin_vllm.model.layout import IGNORED_PREFIXES, PREFIX, checkpoint_shapes
from dynin_vllm.model.media_encoders import ImageEncoder
from dynin_vllm.multimodal.processor import (
    DyninDummyInputsBuilder,
    DyninMultiModalProcessor,
    DyninProcessingInfo,
)

logger = init_logger(__name__)

#: Checkpoint projections stacked into one fused vLLM layer, as shard ids of
#: the fused layer's weight loader. ``ff_proj`` is the SwiGLU *gate*.
STACKED_PARAMS = WeightsMapper(
    orig_to_new_stacked={
        ".q_proj.": (".qkv_proj.", "q"),
        ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".ff_proj.": (".gate_up_proj.", 0),
        ".up_proj.": (".gate_up_proj.", 1),
    }
)

#: Fused vLLM layer -> the checkpoint (and LoRA adapter) projections it holds.
PACKED_MODULES: dict[str, list[str]] = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["ff_proj", "up_proj"],
}


class CheckpointLayoutError(ValueError):
    """The checkpoint's tensors do not match the LLaDA layout of its config."""


class LLaDABlock(nn.Module):
    """One ``LLaDALlamaBlock``: pre-norm bidirectional attention and SwiGLU MLP."""

    def __init__(self, config: LLaDAConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        quant_config = vllm_config.quant_config
        self.head_dim = config.head_dim
        self.num_heads = config.n_heads // tp
        self.num_kv_heads = max(1, config.num_key_value_heads // tp)
        self.rope_full_precision = bool(config.rope_full_precision)

        self.attn_norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.qkv_proj = QKVParallelLinear(
            config.d_model,
            self.head_dim,
            config.n_heads,
            config.num_key_value_heads,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.attn_out = RowParallelLinear(
            config.n_heads * self.head_dim,
            config.d_model,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.attn_out",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=config.max_sequence_length,
            is_neox_style=True,
            rope_parameters=getattr(config, "rope_parameters", None)
            or {"rope_type": "default", "rope_theta": config.rope_theta},
            dtype=torch.float32 if self.rope_full_precision else None,
        )
        self.attn = vllm_private.attention_layer_cls()(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )
        make_bidirectional(self.attn)

        self.ff_norm = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        self.gate_up_proj = MergedColumnParallelLinear(
            config.d_model,
            [config.mlp_hidden_size] * 2,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj",
        )
        self.act = SiluAndMul()
        self.ff_out = RowParallelLinear(
            config.mlp_hidden_size,
            config.d_model,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.ff_out",
        )
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

    def _rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        if not self.rope_full_precision or q.dtype == torch.float32:
            return self.rotary_emb(positions, q, k)
        # LLaDA rotates in fp32 (rope_full_precision) and casts back.
        q32, k32 = self.rotary_emb(positions, q.float(), k.float())
        return q32.to(q.dtype), k32.to(k.dtype)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            x = self.attn_norm(hidden_states)
        else:
            x, residual = self.attn_norm(hidden_states, residual)
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self._rope(positions, q, k)
        x, _ = self.attn_out(self.attn(q, k, v))

        x, residual = self.ff_norm(x, residual)
        gate_up, _ = self.gate_up_proj(x)
        x, _ = self.ff_out(self.act(gate_up))
        return x, residual


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": 0,
        "positions": 0,
        "inputs_embeds": 0,
    }
)
class LLaDATransformer(nn.Module):
    """``LLaDAModel.transformer``: embedding, blocks and final norm."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: LLaDAConfig = vllm_config.model_config.hf_config
        self.config = config
        self.wte = VocabParallelEmbedding(
            config.matrix_vocab_size,
            config.d_model,
            quant_config=vllm_config.quant_config,
            prefix=f"{prefix}.wte",
        )
        self.blocks = nn.ModuleList(
            LLaDABlock(config, vllm_config, prefix=f"{prefix}.blocks.{i}")
            for i in range(config.n_layers)
        )
        self.ln_f = RMSNorm(config.d_model, eps=config.rms_norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.wte(input_ids)
        residual = None
        for block in self.blocks:
            hidden, residual = block(positions, hidden, residual)
        hidden, _ = self.ln_f(hidden, residual)
        return hidden


class _LLaDAModel(nn.Module):
    """``LLaDAModelLM.model``: holds ``transformer`` to keep the HF names."""

    hf_to_vllm_mapper = STACKED_PARAMS

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: LLaDAConfig = vllm_config.model_config.hf_config
        self.quant_config = vllm_config.quant_config
        self.transformer = LLaDATransformer(
            vllm_config=vllm_config, prefix=f"{prefix}.transformer"
        )
        if config.weight_tying:
            self.transformer.ff_out = None
        else:
            self.transformer.ff_out = ParallelLMHead(
                config.matrix_vocab_size,
                config.d_model,
                quant_config=vllm_config.quant_config,
                prefix=f"{prefix}.transformer.ff_out",
            )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load ``transformer.*`` tensors; the fused layers take their shards."""
        loader = AutoWeightsLoader(self)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)


class _LayoutCheck:
    """Passes through the tensors that fit the layout and records the others.

    Every tensor is looked at before anything is reported, so one error names
    all unknown, missing and mis-shaped tensors of the checkpoint.
    """

    def __init__(self, config: LLaDAConfig):
        self.config = config
        self.expected = checkpoint_shapes(config)
        self.present: set[str] = set()
        self.unknown: list[str] = []
        self.misshaped: list[str] = []

    def filter(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if name.startswith(IGNORED_PREFIXES):
                logger.info("Skipping %s (not used for inference).", name)
                continue
            shape = self.expected.get(name)
            if shape is None:
                self.unknown.append(name)
                continue
            self.present.add(name)
            if tuple(tensor.shape) != shape:
                self.misshaped.append(
                    f"{name}: checkpoint {tuple(tensor.shape)}, expected {shape}"
                )
                continue
            yield name, tensor

    def raise_for_problems(self) -> None:
        missing = sorted(set(self.expected) - self.present)
        problems = []
        if self.unknown:
            problems.append(f"unknown tensors: {', '.join(sorted(self.unknown))}")
        if self.misshaped:
            problems.append(
                f"tensors with the wrong shape: {'; '.join(self.misshaped)}"
            )
        if missing:
            problems.append(f"missing tensors: {', '.join(missing)}")
        if problems:
            raise CheckpointLayoutError(
                f"Checkpoint does not match the {self.config.model_type} layout of "
                f"its config.json ({' | '.join(problems)})."
            )


@MULTIMODAL_REGISTRY.register_processor(
    DyninMultiModalProcessor,
    info=DyninProcessingInfo,
    dummy_inputs=DyninDummyInputsBuilder,
)
class LLaDAForMaskedDiffusion(
    nn.Module, SupportsMultiModal, SupportsLoRA, SupportsQuant
):
    """vLLM model for ``LLaDAModelLM``, ``MMadaModelLM`` and ``DyninOmniModelLM``.

    The forward pass is an ordinary paged-KV transformer forward with
    bidirectional attention; the masked-denoising loop lives in the engine
    (``dynin_vllm.engine``) and the diffusion core (``dynin_vllm.diffusion``).
    Dynin-Omni checkpoints also take images, videos and audio
    (``embed_multimodal``; :class:`dynin_vllm.model.dynin_omni.
    DyninOmniForMaskedDiffusion` adds speech recognition); the others are
    text-only (their processor accepts no media).
    """

    #: Read by ``dynin_vllm.engine``: this model denoises masked canvases.
    is_masked_diffusion = True

    hf_to_vllm_mapper = _LLaDAModel.hf_to_vllm_mapper
    # LoRA (and quantization configs): the checkpoint projections of each
    # fused layer. Adapters target q/k/v_proj, attn_out, ff_proj, up_proj and
    # the blocks' ff_out (the MLP down projection).
    packed_modules_mapping = PACKED_MODULES
    # The input embedding takes embedding LoRA. The LM head
    # (``transformer.ff_out``) does not: vLLM applies LM-head LoRA only to a
    # module named ``lm_head`` beside ``logits_processor``.
    embedding_modules = {"wte": "input_embeddings"}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        if not isinstance(config, LLaDAConfig):
            raise TypeError(
                f"{type(self).__name__} needs a dynin-vllm LLaDA config, got "
                f"{type(config).__name__}; is the dynin-vllm plugin installed?"
            )
        config.check_supported()
        self.config = config
        self.model = _LLaDAModel(vllm_config=vllm_config, prefix="model")
        # Matrices may be padded past vocab_size (embedding_size); logits are
        # cut back to vocab_size.
        self.logits_processor = LogitsProcessor(config.vocab_size)
        # Vocabulary columns [lo, hi) the next logits need (the runner sets
        # them when every row of a step is restricted, e.g. image codes).
        self._logits_columns: tuple[int, int] | None = None
        self._logits_row_windows: list[tuple[torch.Tensor, int, int]] | None = None
        # Not a submodule: its weights are not in the checkpoint.
        self._image_encoder = (
            ImageEncoder.for_model(vllm_config.model_config.model)
            if config.model_type in IMAGE_MODEL_TYPES
            else None
        )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The processor puts the media first; the chat text gets no marker.
        if modality in ("image", "video", "audio"):
            return None
        raise ValueError(f"Dynin-Omni takes no {modality} input")

    def get_language_model(self) -> nn.Module:
        return self

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        # vLLM calls this once per modality, with that modality's items.
        speech = kwargs.get("audio_ids")
        if speech is not None:
            # The processor already turned the audio into vocabulary ids
            # (dynin_vllm.multimodal.speech_units says why).
            if isinstance(speech, torch.Tensor):
                speech = list(speech)
            return [self.embed_input_ids(ids.reshape(-1)) for ids in speech]
        images, videos = kwargs.get("pixel_values"), kwargs.get("video_pixel_values")
        if images is None and videos is None:
            return []
        if self._image_encoder is None:
            raise RuntimeError("media input reached a model without MAGVIT-v2")
        if images is not None and videos is not None:
            raise RuntimeError("images and videos in one encoder call")
        if images is not None:
            return self._image_encoder.embed(
                images, kwargs["image_code_offset"], self.embed_input_ids
            )
        return self._image_encoder.embed_videos(
            videos, kwargs["video_code_offset"], self.embed_input_ids
        )

    @property
    def lm_head(self) -> nn.Module:
        head = self.model.transformer.ff_out
        if head is not None:
            return head
        # Tied: the embedding matrix, without the LoRA wrapper it may be in.
        wte = self.model.transformer.wte
        return getattr(wte, "base_layer", wte)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor] | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = self.model.transformer.embed_input_ids(input_ids)
        if multimodal_embeddings and is_multimodal is not None:
            media = torch.cat(list(multimodal_embeddings)).to(embeds.dtype)
            embeds = embeds.clone()
            embeds[is_multimodal] = media
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model.transformer(
            input_ids, positions, intermediate_tensors, inputs_embeds
        )

    def set_logits_columns(
        self,
        columns: tuple[int, int] | None,
        rows: list[tuple[torch.Tensor, int, int]] | None = None,
    ) -> bool:
        """Compute only vocabulary columns ``[lo, hi)`` in :meth:`compute_logits`
        from now on (``None``: all of them); or, with ``rows`` and no
        ``columns``, only ``[lo, hi)`` for each group of ``(row indices, lo,
        hi)`` and every column for the other rows (the logits are then full
        width, 0 outside a group's columns). Returns whether the restriction
        applies: it does not where the LM head cannot be sliced (tensor
        parallel shards, quantized or LoRA-wrapped heads, scaled or capped
        logits), and then the logits stay full width."""
        head = self.lm_head
        sliceable = (
            (columns is not None or bool(rows))
            and get_tensor_model_parallel_world_size() == 1
            and type(getattr(head, "quant_method", None)).__name__
            == "UnquantizedEmbeddingMethod"
            and isinstance(getattr(head, "weight", None), torch.Tensor)
            and head.weight.dtype.is_floating_point
            and getattr(head, "bias", None) is None
            and self.logits_processor.scale == 1.0
            and self.logits_processor.soft_cap is None
        )
        self._logits_columns = columns if sliceable else None
        self._logits_row_windows = rows if sliceable and columns is None else None
        return sliceable

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        if self._logits_row_windows:
            return self._row_window_logits(hidden_states, self._logits_row_windows)
        if self._logits_columns is None:
            return self.logits_processor(self.lm_head, hidden_states)
        lo, hi = self._logits_columns
        return nn.functional.linear(hidden_states, self.lm_head.weight[lo:hi])

    def _row_window_logits(
        self, hidden_states: torch.Tensor, windows: list[tuple[torch.Tensor, int, int]]
    ) -> torch.Tensor:
        device = hidden_states.device
        windowed = torch.zeros(hidden_states.shape[0], dtype=torch.bool, device=device)
        for index, _, _ in windows:
            windowed[index.to(device)] = True
        full_rows = (~windowed).nonzero().flatten()
        full = self.logits_processor(self.lm_head, hidden_states[full_rows])
        logits = full.new_zeros(hidden_states.shape[0], full.shape[1])
        logits[full_rows] = full
        weight = self.lm_head.weight
        for index, lo, hi in windows:
            index = index.to(device)
            part = nn.functional.linear(hidden_states[index], weight[lo:hi])
            logits[index, lo:hi] = part.to(logits.dtype)
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF-named tensors, checking names and full shapes against the layout.

        Raises :class:`CheckpointLayoutError` naming every unknown, missing or
        mis-shaped tensor; only tensors that fit the layout reach the loader.
        """
        check = _LayoutCheck(self.config)
        loader = AutoWeightsLoader(self)
        loaded = loader.load_weights(check.filter(weights))
        check.raise_for_problems()
        return loaded


# The LLaDA and MMaDA checkpoints' ``architectures`` strings name this class.
LLaDAModelLM = LLaDAForMaskedDiffusion
MMadaModelLM = LLaDAForMaskedDiffusion

__all__ = [
    "PREFIX",
    "CheckpointLayoutError",
    "LLaDAForMaskedDiffusion",
    "LLaDAModelLM",
    "MMadaModelLM",
]
