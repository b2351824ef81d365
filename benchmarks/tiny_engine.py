"""Engine start, step rate and per-step overhead on the tiny checkpoint.

    python benchmarks/tiny_engine.py [--out benchmarks/results/tiny_engine.json]

On the embedded tiny Dynin-Omni checkpoint (the one ``make serve`` uses; width
64, 2 layers) with this CPU box's engine settings, and on a stock-vLLM
``LlamaForCausalLM`` of the same shapes and vocabulary, it measures:

- engine start time (``LLM(...)`` construction, torch.compile included unless
  ``--eager``);
- for batches of 1 and 16 (prompt 32, answer 64, block 16, 4 tokens per step)
  and each of ``--modes``: engine steps/s (one forward for the whole batch
  each), denoising steps/s summed over requests, committed tokens/s;
- the per-step time against stock vLLM's autoregressive step, split in two:
  the model's forward (transformer and LM head, timed around the model's
  ``forward`` and ``compute_logits``) and the engine's work (everything else:
  scheduling, input preparation, sampling or denoising, output processing).

Both engines run in this process (the engine core in-process, its worker in
the engine core) and the runs alternate between them, AR first, so that the
machine's drift over the invocation falls on both alike; each number is the
run with the median step time out of ``--repeat``.

``--vocab 1024`` runs both on a 1,024-id vocabulary (a LLaDA checkpoint with
the mask id on top), where the LM head is negligible too: what remains is the
forward of each step's tokens and what a step costs the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# Both engines in this process, so that their runs can alternate.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT, ANSWER = 32, 64
BATCHES = (1, 16)

#: Seconds spent in the model's forward and LM head since the last reset.
_FORWARD = {"seconds": 0.0}


def _timed(function: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _FORWARD["seconds"] += time.perf_counter() - start

    return timed


def _time_the_model(model: Any) -> None:
    """Runs in the (in-process) worker: time the model's two compute calls."""
    model.forward = _timed(model.forward)
    model.compute_logits = _timed(model.compute_logits)


def run(engine: Any, batch: int, params: Any, diffusion: bool) -> dict:
    for i in range(batch):
        prompt = [1, *range(100 + i, 100 + i + PROMPT - 1)]
        engine.add_request(
            f"b{batch}-{i}-{time.monotonic_ns()}", {"prompt_token_ids": prompt}, params
        )
    steps = tokens = denoising = 0
    _FORWARD["seconds"] = 0.0
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
    forward = _FORWARD["seconds"]
    return {
        "batch": batch,
        "engine_steps": steps,
        "seconds": elapsed,
        "seconds_per_engine_step": elapsed / steps,
        "forward_seconds_per_step": forward / steps,
        "engine_work_seconds_per_step": (elapsed - forward) / steps,
        "engine_steps_per_s": steps / elapsed,
        "request_denoising_steps_per_s": denoising / elapsed if diffusion else None,
        "committed_tokens_per_s": tokens / elapsed,
    }


def start_engine(model: Path, eager: bool) -> tuple[Any, float]:
    """An in-process engine on ``model`` and its start time in seconds."""
    from vllm import LLM

    from dynin_vllm.testing.engine_args import ENGINE_ARGS

    start = time.perf_counter()
    # With stats on, the engine core reports every step (not only those that
    # emit tokens), so the front end's step count is the number of forwards.
    llm = LLM(
        model=str(model),
        kv_cache_memory_bytes=1 << 28,
        max_model_len=1024,
        enforce_eager=eager,
        disable_log_stats=False,
        distributed_executor_backend=ENGINE_ARGS["distributed_executor_backend"],
    )
    elapsed = time.perf_counter() - start
    llm.apply_model(_time_the_model)
    return llm, elapsed


def measure(runs: dict[str, tuple[Any, Any, bool]], repeat: int) -> dict:
    """``{name: (engine, SamplingParams, diffusion)}``: every name at batch 1
    and 16, the runs alternating between names; the median run of each."""
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for batch in BATCHES:
        samples: dict[str, list[dict]] = {name: [] for name in runs}
        for llm, params, diffusion in runs.values():  # warm-up
            run(llm.llm_engine, batch, params, diffusion)
        for _ in range(repeat):
            for name, (llm, params, diffusion) in runs.items():
                samples[name].append(run(llm.llm_engine, batch, params, diffusion))
        for name, found in samples.items():
            found.sort(key=lambda r: r["seconds_per_engine_step"])
            median = found[len(found) // 2]
            spread = [r["seconds_per_engine_step"] for r in found]
            results[name].append(
                {
                    **median,
                    "repeats": repeat,
                    "step_seconds_stdev": statistics.pstdev(spread),
                }
            )
    return results


def ratios(results: dict[str, list[dict]], key: str) -> dict[str, dict[str, float]]:
    """Each diffusion mode's ``key`` over AR's, per batch."""
    theirs = results["AR"]
    return {
        name: {
            f"batch {a['batch']}": a[key] / b[key]
            for a, b in zip(ours, theirs, strict=True)
        }
        for name, ours in results.items()
        if name != "AR"
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--eager", action="store_true", help="skip torch.compile")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument(
        "--vocab", type=int, help="a vocabulary of this many ids (default: the real)"
    )
    parser.add_argument(
        "--modes", default="dual", help="comma-separated denoising modes"
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="runs per batch; the median is kept"
    )
    args = parser.parse_args(argv)

    from cpu_throughput import build_checkpoints
    from vllm import SamplingParams

    from dynin_vllm.testing.make_checkpoint import TINY_SIZES

    tag = "tiny" if args.vocab is None else f"tiny-v{args.vocab}"
    dynin, llama = build_checkpoints(args.cache, TINY_SIZES, tag=tag, vocab=args.vocab)
    ar_llm, ar_start = start_engine(llama, args.eager)
    dynin_llm, dynin_start = start_engine(dynin, args.eager)
    runs = {
        "AR": (
            ar_llm,
            SamplingParams(max_tokens=ANSWER, temperature=0, ignore_eos=True),
            False,
        )
    }
    for mode in args.modes.split(","):
        params = SamplingParams(
            max_tokens=ANSWER,
            temperature=0,
            ignore_eos=True,
            extra_args={"block_length": 16, "steps": 16, "mode": mode},
        )
        runs[mode] = (dynin_llm, params, True)
    measured = measure(runs, args.repeat)
    results = {
        "compiled": not args.eager,
        "vocab": args.vocab or 138752,
        "in_process": True,
        "engine_start_s": {"dynin-vllm": dynin_start, "AR": ar_start},
        "runs": measured,
        "step_time_ratio": ratios(measured, "seconds_per_engine_step"),
        "forward_time_ratio": ratios(measured, "forward_seconds_per_step"),
        "engine_work_ratio": ratios(measured, "engine_work_seconds_per_step"),
    }
    for name, rows in measured.items():
        for r in rows:
            print(
                f"{name:7s} batch {r['batch']:2d}: step "
                f"{1000 * r['seconds_per_engine_step']:6.2f} ms = forward "
                f"{1000 * r['forward_seconds_per_step']:6.2f} + engine "
                f"{1000 * r['engine_work_seconds_per_step']:6.2f}"
            )
    for key in ("step_time_ratio", "forward_time_ratio", "engine_work_ratio"):
        print(key, json.dumps(results[key]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
