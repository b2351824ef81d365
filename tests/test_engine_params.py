"""What the denoiser runs is what the front end parsed, for every default source.

Sources, lowest first: the built-in defaults, the checkpoint's
``generation_config.json``, ``--override-generation-config``
(``override_generation_config``) and the request's own ``extra_args``. The
expected values are written out here by hand; the engine's are read from the
model runner (``recent_request_params``) after the request ran.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from dynin_vllm.diffusion.params import BUILTIN_DEFAULTS
from dynin_vllm.testing.make_checkpoint import make_checkpoint
from tests.engine_utils import ENGINE_ARGS, make_llm, shutdown

pytestmark = pytest.mark.engine

PROMPT = [126080, 11, 22, 33, 44, 55, 66]
CHECKPOINT_DEFAULTS = {
    "block_length": 8,
    "steps": 8,
    "remasking": "random",
    "threshold": 0.9,
    "cfg_scale": 0.5,
    "mode": "exact",
    "infill": False,
}
SERVER_OVERRIDES = {"mode": "block", "cfg_scale": 0.0}
NONE = {
    "factor": None,
    "canvas": None,
    "uncond_prompt_token_ids": None,
    "likelihood_tokens": None,
}
#: The likelihood settings as resolved (``mc_batch_size``: ``min(32, mc_num)``).
MONTE_CARLO = {
    "mc_num": 128,
    "mc_batch_size": 32,
    # Generation-task fields, unset for text.
    "allowed_token_ranges": None,
    "uncond_masked_slots": 0,
    "position_gap": None,
    "uncond_position_gap": None,
    "num_previews": 0,
}


def _run(llm, extra: dict | None, seed: int | None = 5) -> dict:
    """Run one request; return the parameters the denoiser ran it with."""
    params = SamplingParams(
        max_tokens=8, temperature=0, seed=seed, ignore_eos=True, extra_args=extra
    )
    out = llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 8
    (recent,) = llm.collective_rpc("recent_request_params")
    return recent[-1][1]


@pytest.fixture(scope="module")
def configured_llm(tmp_path_factory):
    path = make_checkpoint(
        tmp_path_factory.mktemp("params") / "dynin",
        "dynin",
        generation_overrides=CHECKPOINT_DEFAULTS,
    )
    llm = make_llm(path, override_generation_config=SERVER_OVERRIDES)
    yield llm
    shutdown(llm)


def test_builtin_defaults_reach_the_denoiser(dynin_llm):
    got = _run(dynin_llm, None, seed=3)
    assert got == {
        **BUILTIN_DEFAULTS,
        **NONE,
        **MONTE_CARLO,
        "seed": 3,
        "task": "text",
        "explicit": [],
    }
    got = _run(dynin_llm, {"steps": 4, "block_length": 4, "seed": 11})
    assert got == {
        **BUILTIN_DEFAULTS,
        **NONE,
        **MONTE_CARLO,
        "steps": 4,
        "block_length": 4,
        "seed": 11,
        "task": "text",
        "explicit": ["block_length", "steps"],
    }


def test_checkpoint_and_server_defaults_reach_the_denoiser(configured_llm):
    got = _run(configured_llm, None)
    assert got == {
        "block_length": 8,  # generation_config.json
        "steps": 8,
        "remasking": "random",
        "threshold": 0.9,
        "cfg_scale": 0.0,  # --override-generation-config over the checkpoint
        "mode": "block",
        "infill": False,
        "seed": 5,  # SamplingParams.seed
        "task": "text",
        **NONE,
        **MONTE_CARLO,
        # Set by the checkpoint or the server: a task's defaults yield to them.
        "explicit": [
            "block_length",
            "cfg_scale",
            "infill",
            "mode",
            "remasking",
            "steps",
            "threshold",
        ],
    }


def test_request_values_win_and_a_requested_rule_replaces_the_default(
    configured_llm,
):
    got = _run(configured_llm, {"factor": 1.0, "mode": "prefix", "block_length": 4})
    assert got["factor"] == 1.0 and got["threshold"] is None  # not the default 0.9
    assert (got["mode"], got["block_length"], got["steps"]) == ("prefix", 4, 8)
    got = _run(configured_llm, {"cfg_scale": 1.0, "remasking": "low_confidence"})
    assert (got["cfg_scale"], got["remasking"], got["threshold"]) == (
        1.0,
        "low_confidence",
        0.9,
    )


def test_a_request_that_cannot_be_honoured_is_rejected(configured_llm):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as err:
        _run(configured_llm, {"threshold": 0.5, "factor": 1.0})
    assert err.value.parameter == "factor"
    # The engine keeps serving.
    assert _run(configured_llm, {"steps": 4})["steps"] == 4


def test_invalid_checkpoint_defaults_fail_the_engine_start(tmp_path):
    """A server whose defaults no request could run with does not start."""
    import subprocess
    import sys

    path = make_checkpoint(
        tmp_path / "bad",
        "dynin",
        generation_overrides={"threshold": 0.9, "factor": 1.0},
    )
    args = {**ENGINE_ARGS, "max_model_len": 128}
    code = f"from vllm import LLM\nLLM(model={str(path)!r}, **{args!r})\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "invalid masked-diffusion default" in result.stderr
    assert "factor" in result.stderr
