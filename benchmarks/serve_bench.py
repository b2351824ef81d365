"""Serving throughput with vLLM's own ``vllm bench serve``, dynin-vllm vs AR.

    python benchmarks/serve_bench.py DYNIN_CHECKPOINT LLAMA_CHECKPOINT

Starts ``vllm serve`` on loopback for each checkpoint in turn and runs
``vllm bench serve`` (random dataset: 32 prompts of 64 tokens, 64 output
tokens, ``ignore_eos``, all sent at once) against it; the denoising settings
reach the server through ``--extra-body`` as ``vllm_xargs``. Prints one JSON
line with vLLM's own metrics (request and output throughput, TTFT, TPOT).
Both servers run with the engine settings of ``cpu_throughput.py`` and the
tests (``dynin_vllm.testing.engine_args``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynin_vllm.serving.launch import Server, served
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args

BIN = Path(sys.executable).parent
DIFFUSION = {"vllm_xargs": {"mode": "prefix", "block_length": 16, "steps": 16}}
KEYS = (
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "mean_tpot_ms",
    "duration",
    "completed",
)


def bench(server: Server, extra: dict | None, out_dir: Path) -> dict:
    name = "result.json"
    command = [
        str(BIN / "vllm"),
        "bench",
        "serve",
        "--backend",
        "vllm",
        "--model",
        server.model,
        "--base-url",
        server.base_url,
        "--dataset-name",
        "random",
        "--random-input-len",
        "64",
        "--random-output-len",
        "64",
        "--num-prompts",
        "32",
        "--ignore-eos",
        "--temperature",
        "0",
        "--save-result",
        "--result-dir",
        str(out_dir),
        "--result-filename",
        name,
    ]
    if extra:
        command += ["--extra-body", json.dumps(extra)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads((out_dir / name).read_text())
    return {k: result.get(k) for k in KEYS}


def run(model: str, extra: dict | None) -> dict:
    """Serve ``model`` with the shared CPU engine settings and benchmark it."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with served(model, extra_args=cli_args(ENGINE_ARGS), log_path=log) as server:
            result = bench(server, extra, Path(tmp))
        time.sleep(2)  # let the server's memory go before the next one starts
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dynin")
    parser.add_argument("llama")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    dynin = run(args.dynin, DIFFUSION)
    ar = run(args.llama, None)
    ratio = (
        dynin["output_throughput"] / ar["output_throughput"]
        if dynin["output_throughput"] and ar["output_throughput"]
        else None
    )
    print(
        json.dumps(
            {
                "tool": "vllm bench serve (random, 32 x 64 -> 64, ignore_eos)",
                "dynin_settings": DIFFUSION,
                "dynin-vllm": dynin,
                "AR": ar,
                "output_throughput_ratio": ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
