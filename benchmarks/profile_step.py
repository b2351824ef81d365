"""Where a denoising step spends its time (CPU, in-process engine).

    python benchmarks/profile_step.py CHECKPOINT [--batch 8]

Runs the engine in-process under ``torch.profiler`` and sums the model
runner's own record_function ranges over a batch of denoising requests:
``preprocess`` (batch and canvas bookkeeping, our step plan), ``forward`` (the
transformer), ``postprocess`` (the LM head on the canvas rows), ``sample`` (our
batched denoising step: scoring, selection, commit), ``bookkeep`` and ``draft``
(proposing the next canvases). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_CUSTOM_SCOPES_FOR_PROFILING"] = "1"  # the runner's ranges
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

RANGES = ("preprocess", "forward", "postprocess", "sample", "bookkeep", "draft")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mode", default="prefix")
    args = parser.parse_args()

    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.checkpoint,
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=512,
        enforce_eager=True,
        distributed_executor_backend="uni",
    )
    prompts = [
        {"prompt_token_ids": [126080, *range(200 + i, 263 + i)]}
        for i in range(args.batch)
    ]
    params = SamplingParams(
        max_tokens=64,
        temperature=0,
        ignore_eos=True,
        extra_args={"mode": args.mode, "block_length": 16, "steps": 64},
    )
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm up
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        llm.generate(prompts, params, use_tqdm=False)
    totals = {name: 0.0 for name in RANGES}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        for name in RANGES:
            if event.key == f"gpu_model_runner: {name}":
                totals[name] += event.cpu_time_total / 1e6
        if not event.key.startswith("gpu_model_runner"):
            ops[event.key] = event.self_cpu_time_total / 1e6
    top_ops = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:8])
    total = sum(totals.values())
    print(
        json.dumps(
            {
                "batch": args.batch,
                "mode": args.mode,
                "seconds": totals,
                "share": {k: v / total for k, v in totals.items()} if total else {},
                "top_ops_self_seconds": top_ops,
            }
        )
    )
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
