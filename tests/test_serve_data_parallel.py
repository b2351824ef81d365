"""``vllm serve --data-parallel-size 2`` on CPU: two engine cores, one answer each.

Concurrent requests spread over both engine cores (vLLM's DP coordinator
balances them; the Prometheus series carry an ``engine`` label), and every
answer equals the reference, as with one core.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.serving.launch import served
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args

pytestmark = pytest.mark.server

NUM_REQUESTS = 24


@pytest.fixture(scope="module")
def dp_server(dynin_checkpoint: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_dp") / "server.log"
    # Two engine cores on a 2-core machine: half the usual KV reservation
    # each, and one core each.
    args = {
        **ENGINE_ARGS,
        "data_parallel_size": 2,
        "distributed_executor_backend": None,
    }
    with served(
        dynin_checkpoint,
        extra_args=cli_args(args),
        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
        log_path=log,
    ) as running:
        yield running


def _request(i: int) -> dict:
    modes = ("prefix", "exact", "block")
    return {
        "prompt": [126080, 10 + i, 20, 30 + i % 5],
        "max_tokens": 16,
        "temperature": 0,
        "vllm_xargs": {"block_length": 8, "steps": 16, "mode": modes[i % 3]},
    }


def test_both_engine_cores_serve_and_answers_match_the_reference(
    dp_server, reference_model
):
    def post(i: int) -> dict:
        body = {"model": dp_server.model, "return_token_ids": True, **_request(i)}
        response = requests.post(
            f"{dp_server.base_url}/v1/completions", json=body, timeout=300
        )
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]

    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(post, range(NUM_REQUESTS)))
    for i, choice in enumerate(choices):
        request = _request(i)
        want = reference_generate(
            reference_model,
            request["prompt"],
            gen_length=16,
            block_length=8,
            steps=16,
            mode=request["vllm_xargs"]["mode"],
        ).answer
        assert choice["token_ids"] == want[: len(choice["token_ids"])], i
        assert (
            len(choice["token_ids"]) == 16
            or want[len(choice["token_ids"]) - 1] == 126081
        )

    metrics = requests.get(f"{dp_server.base_url}/metrics", timeout=30).text
    per_engine: dict[str, float] = {}
    for line in re.findall(
        r"^vllm:request_success_total\{([^}]*)\} ([0-9.e+]+)$", metrics, flags=re.M
    ):
        labels, count = line
        engine = re.search(r'engine="(\d+)"', labels).group(1)
        per_engine[engine] = per_engine.get(engine, 0.0) + float(count)
    assert set(per_engine) == {"0", "1"}, per_engine
    assert all(count > 0 for count in per_engine.values()), per_engine
    assert sum(per_engine.values()) == NUM_REQUESTS
