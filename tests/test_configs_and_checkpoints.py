"""Config classes and the tiny real-layout checkpoints."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from dynin_vllm.configs import (
    LLADA_8B_FIELDS,
    DyninOmniConfig,
    LLaDAConfig,
    MMadaConfig,
)
from dynin_vllm.model.layout import checkpoint_shapes
from dynin_vllm.testing.make_checkpoint import PRESETS, make_checkpoint
from dynin_vllm.testing.tokenizer import build_tokenizer


def test_llada_8b_config_exposes_vllm_names():
    config = LLaDAConfig(**LLADA_8B_FIELDS)
    assert config.hidden_size == 4096
    assert config.num_attention_heads == 32
    assert config.num_key_value_heads == 32
    assert config.num_hidden_layers == 32
    assert config.intermediate_size == 12288
    assert config.max_position_embeddings == 4096
    assert config.head_dim == 128
    assert config.hidden_act == "silu"
    assert config.vocab_size == config.matrix_vocab_size == 126464
    assert config.tie_word_embeddings is False
    assert config.mask_token_id == 126336 and config.eos_token_id == 126081
    config.check_supported()


def test_dynin_and_mmada_keep_their_extra_fields():
    dynin = DyninOmniConfig(vocab_size=138752, embedding_size=138752, vid_merge=False)
    assert dynin.model_type == "dynin_omni"
    assert (dynin.llm_vocab_size, dynin.codebook_size) == (126464, 8192)
    assert dynin.vid_merge_stride == 2
    mmada = MMadaConfig(codebook_size=8192, num_vq_tokens=1024)
    assert mmada.model_type == "mmada" and mmada.num_vq_tokens == 1024


@pytest.mark.parametrize(
    ("field", "value"),
    [("block_type", "sequential"), ("alibi", True), ("include_bias", True)],
)
def test_unsupported_networks_fail_naming_the_field(field, value):
    config = LLaDAConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        config.check_supported()


def test_gqa_and_multi_query_head_counts():
    assert LLaDAConfig(n_heads=8, n_kv_heads=2).num_key_value_heads == 2
    assert LLaDAConfig(n_heads=8, n_kv_heads=None).num_key_value_heads == 8
    assert LLaDAConfig(multi_query_attention=True).num_key_value_heads == 1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_checkpoint_has_the_real_layout(checkpoints, preset):
    path = checkpoints[preset]
    spec = PRESETS[preset]
    config = json.loads((path / "config.json").read_text())
    # Every LLaDA config.json field is written, with real ids and vocabulary.
    assert set(LLADA_8B_FIELDS) <= set(config)
    assert config["architectures"] == [spec.architecture]
    assert config["model_type"] == spec.model_type
    assert config["vocab_size"] == config["embedding_size"] == spec.vocab_size
    assert (config["mask_token_id"], config["eos_token_id"]) == (126336, 126081)

    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    assert shards[0] == "model-00001-of-00002.safetensors"
    names, total = {}, 0
    for shard in shards:
        with safe_open(str(path / shard), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = f.get_tensor(name)
                names[name] = tuple(tensor.shape)
                total += tensor.numel() * tensor.element_size()
                assert index["weight_map"][name] == shard
    layout = checkpoint_shapes(LLaDAConfig(**config))
    assert names == layout
    assert "model.transformer.ff_out.weight" in names  # untied LM head
    assert index["metadata"]["total_size"] == total

    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 126081
    assert generation["bos_token_id"] == 126080


@pytest.mark.parametrize(
    ("length", "offset_name"), [(126349, "llada"), (126464, "dynin")]
)
def test_tokenizer_holds_special_tokens_at_their_real_ids(length, offset_name):
    tok = build_tokenizer(length)
    assert len(tok) == length
    ids = tok.convert_tokens_to_ids(
        [
            "<|startoftext|>",
            "<|endoftext|>",
            "<|reserved_token_0|>",
            "<|mdm_mask|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ]
    )
    assert ids == [126080, 126081, 126084, 126336, 126346, 126347, 126348]
    assert (tok.bos_token_id, tok.eos_token_id) == (126080, 126081)
    text = "héllo, world"
    assert tok.decode(tok(text).input_ids) == text
    assert 126080 not in tok(text).input_ids  # no BOS added, as LLaDA


def test_media_id_offsets_follow_the_tokenizer_length():
    """Upstream offsets image codes by len(tokenizer), speech by +8192 more."""
    from dynin_vllm.multimodal.ids import VocabLayout

    dynin = VocabLayout.from_tokenizer(build_tokenizer(126464))
    assert (dynin.image_offset, dynin.speech_offset) == (126464, 134656)
    assert dynin.speech_offset + 4096 == 138752  # Dynin-Omni's vocabulary size
    mmada = VocabLayout.from_tokenizer(build_tokenizer(126349))
    assert mmada.image_offset == 126349


def test_chat_template_renders_dynin_turns():
    tok = build_tokenizer(126464)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "  Hi  "}],
        add_generation_prompt=True,
        tokenize=False,
        enable_thinking=False,
    )
    assert text == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\nHi\n/no_think"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )


def test_checkpoints_are_deterministic(tmp_path):
    a = make_checkpoint(tmp_path / "a", "llada", seed=7, n_layers=1)
    b = make_checkpoint(tmp_path / "b", "llada", seed=7, n_layers=1)
    c = make_checkpoint(tmp_path / "c", "llada", seed=8, n_layers=1)
    shard = "model-00001-of-00002.safetensors"
    assert (a / shard).read_bytes() == (b / shard).read_bytes()
    assert (a / shard).read_bytes() != (c / shard).read_bytes()


def test_llada_template_keeps_the_blank_line_after_headers():
    tok = build_tokenizer(126349, header_newlines=2)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_pipeline_parallelism_is_refused_naming_it(dynin_checkpoint):
    from vllm.engine.arg_utils import EngineArgs

    import dynin_vllm
    from dynin_vllm.testing.engine_args import ENGINE_ARGS

    dynin_vllm.register()
    args = EngineArgs(
        model=str(dynin_checkpoint),
        pipeline_parallel_size=2,
        **{**ENGINE_ARGS, "distributed_executor_backend": "mp"},
    )
    with pytest.raises(ValueError, match="Pipeline parallelism is not supported"):
        args.create_engine_config()


def test_tensor_parallel_size_must_divide_the_heads(dynin_checkpoint):
    """As in stock vLLM: a clear start-up error, before any process starts."""
    from vllm.engine.arg_utils import EngineArgs

    import dynin_vllm
    from dynin_vllm.testing.engine_args import ENGINE_ARGS

    dynin_vllm.register()
    args = EngineArgs(
        model=str(dynin_checkpoint),
        tensor_parallel_size=3,
        **{**ENGINE_ARGS, "distributed_executor_backend": "mp"},
    )
    with pytest.raises(ValueError, match=r"attention heads \(2\) must be divisible"):
        args.create_engine_config()
