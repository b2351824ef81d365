"""The engine with the Triton kernels forced on gives the torch path's tokens.

The kernels run on CPU in Triton's interpreter (``TRITON_INTERPRET=1``); at
temperature 0 they must not change a single token of the engine's output.
"""

from __future__ import annotations

import pytest

from tests.engine_utils import make_llm, shutdown

pytestmark = pytest.mark.engine

MASK = 126336
REQUESTS = [
    ([126080, 5, 6, 7], {"mode": "exact", "block_length": 4, "steps": 8}),
    ([126080, 9, 8], {"mode": "prefix", "block_length": 4, "threshold": 0.3}),
    ([126080, 42], {"mode": "block", "block_length": 3, "factor": 1.0}),
    ([126080, 11, 12, 13, 14], {"mode": "prefix", "block_length": 4, "cfg_scale": 1.0}),
    ([126080, 3], {"mode": "exact", "block_length": 8, "canvas": [MASK, 77] * 4}),
]


def _generate(llm):
    from vllm import SamplingParams

    outputs = llm.generate(
        [{"prompt_token_ids": prompt} for prompt, _ in REQUESTS],
        [
            SamplingParams(
                max_tokens=8, temperature=0, ignore_eos=True, extra_args=extra
            )
            for _, extra in REQUESTS
        ],
        use_tqdm=False,
    )
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def triton_llm(dynin_checkpoint):
    mp = pytest.MonkeyPatch()
    # The worker processes inherit these at start-up.
    mp.setenv("DYNIN_VLLM_KERNELS", "triton")
    mp.setenv("TRITON_INTERPRET", "1")
    try:
        engine = make_llm(dynin_checkpoint, max_num_seqs=8)
    finally:
        mp.undo()
    yield engine
    shutdown(engine)


def test_forced_kernels_leave_the_output_unchanged(triton_llm, dynin_llm):
    with_kernels = _generate(triton_llm)
    torch_path = _generate(dynin_llm)
    assert with_kernels == torch_path
    assert all(len(tokens) == 8 for tokens in torch_path)
