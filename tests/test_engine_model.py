"""The backbone in vLLM: loading, logits parity, bidirectional attention, errors.

Every preset loads through the production loader without ``trust_remote_code``;
a full-sequence prefill's ``prompt_logprobs`` match the pure-torch reference
forward; changing a *later* token changes an *earlier* position's logprobs,
which a causal model cannot do.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynin_vllm.reference.model import ReferenceLLaDA
from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.testing.make_checkpoint import make_checkpoint
from tests.engine_utils import ENGINE_ARGS, make_llm, shutdown

pytestmark = pytest.mark.engine

PROMPTS = [
    [126080, 3, 17, 99, 4, 250],
    [126080, *range(500, 530)],
    [126080, 126346, 42, 126347, 198, 7, 7, 7, 126348],
]
#: fp32 on both sides; the vLLM kernels (fused QKV, CPU attention, RoPE op)
#: differ from the reference's plain matmuls only by float rounding.
LOGPROB_TOLERANCE = 2e-3


def prompt_logprobs(llm, prompt: list[int]) -> list[dict[int, float]]:
    """vLLM's prompt logprobs (top 5 plus the actual token) per position."""
    from vllm import SamplingParams

    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=5),
        use_tqdm=False,
    )[0]
    return [
        {tok: lp.logprob for tok, lp in entry.items()}
        for entry in out.prompt_logprobs[1:]
    ]


def reference_logprobs(ref: ReferenceLLaDA, prompt: list[int]) -> torch.Tensor:
    """log_softmax of the reference logits, shifted as vLLM reports them."""
    logits = ref.logits(torch.tensor([prompt]))[0]
    return torch.log_softmax(logits.double(), dim=-1)[:-1]


def assert_logprobs_match(llm, ref: ReferenceLLaDA, prompt: list[int]) -> None:
    got = prompt_logprobs(llm, prompt)
    want = reference_logprobs(ref, prompt)
    assert len(got) == len(prompt) - 1
    for pos, entry in enumerate(got):
        assert prompt[pos + 1] in entry
        for tok, value in entry.items():
            assert math.isclose(value, want[pos, tok].item(), abs_tol=LOGPROB_TOLERANCE)


@pytest.mark.parametrize("preset", ["dynin", "llada", "mmada"])
def test_preset_loads_without_remote_code_and_matches_reference(
    preset, checkpoints, dynin_llm
):
    path = checkpoints[preset]
    llm = dynin_llm if preset == "dynin" else make_llm(path, trust_remote_code=False)
    try:
        config = llm.llm_engine.model_config
        assert not config.trust_remote_code
        assert type(config.hf_config).__module__ == "dynin_vllm.configs"
        ref = ReferenceLLaDA.from_pretrained(path)
        for prompt in PROMPTS:
            assert_logprobs_match(llm, ref, prompt)
    finally:
        if llm is not dynin_llm:
            shutdown(llm)


def test_attention_is_bidirectional_through_vllm(dynin_llm):
    """Prompts differing only in their last token: the earlier positions'
    logprobs differ, which causal attention would make identical."""
    a = [126080, 11, 22, 33, 44, 55]
    b = [*a[:-1], 66]
    lp_a, lp_b = prompt_logprobs(dynin_llm, a), prompt_logprobs(dynin_llm, b)
    token = a[2]  # logprob of token 2, computed at position 1
    assert abs(lp_a[1][token] - lp_b[1][token]) > 1e-3


def test_generation_defaults_come_from_the_checkpoint(tmp_path):
    """generation_config.json sets the diffusion defaults of every request."""
    from vllm import SamplingParams

    defaults = {"block_length": 4, "steps": 6, "mode": "exact", "remasking": "random"}
    path = make_checkpoint(
        tmp_path / "llada", "llada", seed=3, generation_overrides=defaults
    )
    llm = make_llm(path)
    try:
        prompt = PROMPTS[0]
        out = llm.generate(
            [{"prompt_token_ids": prompt}],
            SamplingParams(max_tokens=12, temperature=0, seed=9, ignore_eos=True),
            use_tqdm=False,
        )[0].outputs[0]
        ref = ReferenceLLaDA.from_pretrained(path)
        want = reference_generate(ref, prompt, gen_length=12, seed=9, **defaults)
        other = reference_generate(ref, prompt, gen_length=12, block_length=32, seed=9)
        assert list(out.token_ids) == want.answer
        assert want.answer != other.answer  # the defaults changed the result
    finally:
        shutdown(llm)


# --- bad checkpoints -------------------------------------------------------------
def _start_engine(path: Path) -> subprocess.CompletedProcess:
    args = {**ENGINE_ARGS, "max_model_len": 128}
    code = (
        "from vllm import LLM\n"
        f"LLM(model={str(path)!r}, **{args!r})\n"
        "print('ENGINE STARTED')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _rewrite_tensor(path: Path, name: str, new: torch.Tensor | None) -> None:
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = path / index["weight_map"][name]
    tensors = load_file(str(shard))
    if new is None:
        del tensors[name]
        del index["weight_map"][name]
        index_file.write_text(json.dumps(index))
    else:
        tensors[name] = new
    save_file(tensors, str(shard), metadata={"format": "pt"})


MISSING = "model.transformer.blocks.1.up_proj.weight"
MISSHAPEN = "model.transformer.blocks.0.q_proj.weight"


def test_missing_and_misshapen_tensors_fail_naming_them(tmp_path):
    path = make_checkpoint(tmp_path / "damaged", "dynin")
    _rewrite_tensor(path, MISSING, None)
    _rewrite_tensor(path, MISSHAPEN, torch.zeros(64, 32, dtype=torch.bfloat16))
    result = _start_engine(path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "ENGINE STARTED" not in output
    assert f"missing tensors: {MISSING}" in output
    assert f"{MISSHAPEN}: checkpoint (64, 32), expected (64, 64)" in output


def test_unknown_architecture_fails_naming_it(tmp_path):
    path = make_checkpoint(tmp_path / "unknown", "dynin")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["DyninOmniModelLMv9"]
    (path / "config.json").write_text(json.dumps(config))
    result = _start_engine(path)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "ENGINE STARTED" not in output
    assert "DyninOmniModelLMv9" in output
