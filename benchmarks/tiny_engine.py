"""Engine start time, denoising steps/s and committed tokens/s, tiny checkpoint.

    python benchmarks/tiny_engine.py [--out benchmarks/results/tiny_engine.json]

Starts vLLM on the embedded tiny Dynin-Omni checkpoint (the one ``make serve``
uses) with the default engine settings for this CPU box, then generates
batches of 1 and 16 requests (prompt 32 tokens, answer 64, block 16, 4 tokens
per step, ``prefix`` mode) and reports engine steps/s (one forward for the
whole batch each), denoising steps/s summed over requests, and committed
tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--eager", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)

    from dynin_vllm.demo.serve import ensure_tiny_checkpoint

    model = str(ensure_tiny_checkpoint())
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=model,
        gpu_memory_utilization=0.3,
        max_model_len=1024,
        enforce_eager=args.eager,
    )
    start_s = time.perf_counter() - t0
    params = SamplingParams(
        max_tokens=64,
        temperature=0,
        ignore_eos=True,
        extra_args={"block_length": 16, "steps": 16, "mode": "prefix"},
    )
    engine = llm.llm_engine
    results = {"engine_start_s": start_s, "compiled": not args.eager, "runs": []}
    llm.generate([{"prompt_token_ids": [126080] * 32}], params, use_tqdm=False)
    for batch in (1, 16):
        for i in range(batch):
            prompt = [126080, *range(1000 + i, 1031 + i)]
            engine.add_request(f"b{batch}-{i}", {"prompt_token_ids": prompt}, params)
        steps = tokens = denoising = 0
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            outputs = engine.step()
            steps += 1
            for out in outputs:
                if out.finished:
                    tokens += len(out.outputs[0].token_ids)
                    metrics = out.outputs[0].spec_decode_metrics.to_dict()
                    denoising += metrics["num_spec_steps"]
        elapsed = time.perf_counter() - start
        results["runs"].append(
            {
                "batch": batch,
                "engine_steps": steps,
                "seconds": elapsed,
                # one engine step = one forward for the whole batch
                "engine_steps_per_s": steps / elapsed,
                # canvas updates summed over the batch's requests
                "request_denoising_steps_per_s": denoising / elapsed,
                "committed_tokens_per_s": tokens / elapsed,
            }
        )
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
