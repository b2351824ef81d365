"""Data parallelism on CPU: ``vllm serve --data-parallel-size 2`` against one core.

    python -m benchmarks.data_parallel DYNIN_CHECKPOINT [--out FILE.json]

Serves the checkpoint with one engine core, then with two (one CPU core each,
``VLLM_CPU_OMP_THREADS_BIND="0|1"``; each half the usual KV reservation, in
both runs), and measures each with ``vllm bench serve`` (the load of
``serve_bench.py``: 32 prompts of 64 tokens, 64 output tokens, all at once,
prefix mode, block 16, 4 tokens per step). Writes one JSON document with
vLLM's metrics for both and the throughput ratio. On a 2-core machine the
single core also serves the API and tokenizes, so the ratio shows what a second
core buys there, not how DP scales on a server.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.reporting import emit, machine
from benchmarks.serve_bench import DIFFUSION, bench
from dynin_vllm.serving.launch import served
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args

KV_FRACTION = 0.15  # per engine core, so two fit where one usually runs


def run(model: str, data_parallel_size: int) -> dict:
    args = {
        **ENGINE_ARGS,
        "gpu_memory_utilization": KV_FRACTION,
        "data_parallel_size": data_parallel_size,
    }
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if data_parallel_size > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with served(model, extra_args=cli_args(args), env=env, log_path=log) as server:
            result = bench(server, DIFFUSION, Path(tmp))
        time.sleep(2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dynin")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    one = run(args.dynin, 1)
    two = run(args.dynin, 2)
    report = {
        "tool": "vllm bench serve (random, 32 x 64 -> 64, ignore_eos)",
        "machine": machine(),
        "dynin_settings": DIFFUSION,
        "data_parallel_1": one,
        "data_parallel_2": two,
        "output_throughput_ratio": (
            two["output_throughput"] / one["output_throughput"]
            if one["output_throughput"] and two["output_throughput"]
            else None
        ),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
