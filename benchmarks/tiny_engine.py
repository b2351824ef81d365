"""Engine start, step rate and per-step overhead on the tiny checkpoint.

    python benchmarks/tiny_engine.py [--out benchmarks/results/tiny_engine.json]

On the embedded tiny Dynin-Omni checkpoint (the one ``make serve`` uses; width
64, 2 layers) with this CPU box's engine settings, and on a stock-vLLM
``LlamaForCausalLM`` of the same shapes and vocabulary, it measures:

- engine start time (``LLM(...)`` construction, torch.compile included unless
  ``--eager``);
- for batches of 1 and 16 (prompt 32, answer 64, block 16, 4 tokens per step,
  ``prefix`` mode): engine steps/s (one forward for the whole batch each),
  denoising steps/s summed over requests, committed tokens/s;
- the per-step engine overhead: seconds per engine step of dynin-vllm (in
  each ``--modes``) against stock vLLM's autoregressive step, at batch 1 and
  16, on a model so small that the step time is mostly engine overhead.

``--vocab 1024`` runs both on a 1,024-id vocabulary (a LLaDA checkpoint with
the mask id on top), where the LM head is negligible too: what remains is what
a step costs the engine, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT, ANSWER = 32, 64


def run(engine, batch: int, params, diffusion: bool) -> dict:
    for i in range(batch):
        prompt = [1, *range(100 + i, 100 + i + PROMPT - 1)]
        engine.add_request(f"b{batch}-{i}", {"prompt_token_ids": prompt}, params)
    steps = tokens = denoising = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps += 1
        for out in outputs:
            if out.finished:
                tokens += len(out.outputs[0].token_ids)
                if diffusion:
                    metrics = out.outputs[0].spec_decode_metrics.to_dict()
                    denoising += metrics["num_spec_steps"]
    elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        "engine_steps": steps,
        "seconds": elapsed,
        "seconds_per_engine_step": elapsed / steps,
        "engine_steps_per_s": steps / elapsed,
        "request_denoising_steps_per_s": denoising / elapsed if diffusion else None,
        "committed_tokens_per_s": tokens / elapsed,
    }


def _median_run(engine, batch: int, params, diffusion: bool, repeat: int) -> dict:
    """The run with the median time per engine step out of ``repeat``."""
    runs = sorted(
        (run(engine, batch, params, diffusion) for _ in range(repeat)),
        key=lambda r: r["seconds_per_engine_step"],
    )
    return {**runs[len(runs) // 2], "repeats": repeat}


def measure(
    model: Path, runs: dict, diffusion: bool, eager: bool, repeat: int = 1
) -> dict:
    """Start an engine on ``model`` and run ``{name: SamplingParams}`` at
    batch 1 and 16 each (the median of ``repeat`` runs)."""
    from vllm import LLM

    t0 = time.perf_counter()
    # With stats on, the engine core reports every step (not only those that
    # emit tokens), so the front end's step count is the number of forwards.
    llm = LLM(
        model=str(model),
        gpu_memory_utilization=0.3,
        max_model_len=1024,
        enforce_eager=eager,
        disable_log_stats=False,
    )
    result = {"engine_start_s": time.perf_counter() - t0, "runs": {}}
    for name, params in runs.items():
        llm.generate([{"prompt_token_ids": [1] * PROMPT}], params, use_tqdm=False)
        result["runs"][name] = [
            _median_run(llm.llm_engine, batch, params, diffusion, repeat)
            for batch in (1, 16)
        ]
    llm.llm_engine.engine_core.shutdown()
    time.sleep(2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--eager", action="store_true", help="skip torch.compile")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument(
        "--vocab", type=int, help="a vocabulary of this many ids (default: the real)"
    )
    parser.add_argument(
        "--modes", default="prefix", help="comma-separated denoising modes"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per batch; the median is kept"
    )
    args = parser.parse_args(argv)

    from cpu_throughput import build_checkpoints
    from vllm import SamplingParams

    from dynin_vllm.testing.make_checkpoint import TINY_SIZES

    tag = "tiny" if args.vocab is None else f"tiny-v{args.vocab}"
    dynin, llama = build_checkpoints(args.cache, TINY_SIZES, tag=tag, vocab=args.vocab)
    modes = args.modes.split(",")
    diffusion = {
        mode: SamplingParams(
            max_tokens=ANSWER,
            temperature=0,
            ignore_eos=True,
            extra_args={"block_length": 16, "steps": 16, "mode": mode},
        )
        for mode in modes
    }
    ar = SamplingParams(max_tokens=ANSWER, temperature=0, ignore_eos=True)
    results = {
        "compiled": not args.eager,
        "vocab": args.vocab or 138752,
        "dynin-vllm": measure(dynin, diffusion, True, args.eager, args.repeat),
        "AR": measure(llama, {"AR": ar}, False, args.eager, args.repeat),
    }
    theirs = results["AR"]["runs"]["AR"]
    results["step_time_ratio"] = {
        mode: {
            f"batch {a['batch']}": a["seconds_per_engine_step"]
            / b["seconds_per_engine_step"]
            for a, b in zip(results["dynin-vllm"]["runs"][mode], theirs, strict=True)
        }
        for mode in modes
    }
    print(json.dumps(results["step_time_ratio"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
