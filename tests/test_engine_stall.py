"""A model that commits the mask id itself cannot finish a block: the request
fails with an error naming the cause, instead of denoising forever, and the
engine keeps serving.

The checkpoint is built so that every masked position predicts the mask id:
the blocks add nothing to the residual stream (zero output projections), the
final norm keeps one channel, the mask token's embedding is positive there,
and the LM head's mask row reads that channel.
"""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.engine_utils import make_llm, shutdown

pytestmark = pytest.mark.engine

MASK = 126336


@pytest.fixture(scope="module")
def mask_committing_checkpoint(dynin_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("stall") / "dynin"
    shutil.copytree(dynin_checkpoint, path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(path / shard))
        for name, tensor in tensors.items():
            if ".blocks." in name and name.endswith(
                ("attn_out.weight", "ff_out.weight")
            ):
                tensor.zero_()
            elif name == "model.transformer.ln_f.weight":
                tensor.zero_()
                tensor[0] = 1.0
            elif name == "model.transformer.wte.weight":
                tensor[MASK, 0] = 1.0
            elif name == "model.transformer.ff_out.weight":
                tensor[MASK, 0] = 1000.0
        save_file(tensors, str(path / shard), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def stall_llm(mask_committing_checkpoint):
    llm = make_llm(mask_committing_checkpoint)
    yield llm
    shutdown(llm)


@pytest.mark.parametrize(
    "extra",
    [
        {"mode": "prefix", "steps": 8},
        {"mode": "exact", "threshold": 0.5},
        {"mode": "block", "factor": 1.0, "cfg_scale": 1.0},
    ],
)
def test_a_block_that_cannot_finish_fails_the_request(stall_llm, extra):
    from vllm import SamplingParams

    out = stall_llm.generate(
        [{"prompt_token_ids": [126080, 5, 6, 7]}],
        SamplingParams(
            max_tokens=8, temperature=0, extra_args={"block_length": 4, **extra}
        ),
        use_tqdm=False,
    )[0]
    assert out.outputs[0].finish_reason == "error"


def test_the_engine_keeps_serving_after_a_stalled_request(stall_llm):
    """The same engine still finishes a request whose canvas is all fixed."""
    from vllm import SamplingParams

    canvas = [5, 6, 7, 8]
    out = stall_llm.generate(
        [{"prompt_token_ids": [126080, 5, 6, 7]}],
        SamplingParams(max_tokens=4, temperature=0, extra_args={"canvas": canvas}),
        use_tqdm=False,
    )[0]
    assert list(out.outputs[0].token_ids) == canvas
