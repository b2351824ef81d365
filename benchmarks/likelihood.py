"""Masked-diffusion likelihood requests per second, engine against the upstream loop.

    python -m benchmarks.likelihood DYNIN_CHECKPOINT [--out FILE.json]

Workload: 32 (context, continuation) pairs, 64 context tokens and 16
continuation tokens each (seeded random ids), scored with LLaDA's Monte
Carlo ELBO at 8 and at 32 samples (``mc_batch_size = min(32, mc_num)``).

- **engine**: ``LLM.generate`` with every pair at once (``likelihood_tokens``;
  the rows of all requests share engine steps), and with one pair at a time
  (batch 1);
- **upstream loop**: ``dynin_vllm.reference.likelihood.log_likelihood`` on the
  same weights, one pair at a time with ``mc_batch_size`` rows per forward,
  as LLaDA's ``eval_llada.py`` runs.

Both in one run, same machine, float32. Also reports the spread (standard
deviation) of the engine's estimate over 8 seeds for one pair at each sample
count: the Monte Carlo error, expected to shrink about as ``1/sqrt(mc_num)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.reporting import emit, machine

PAIRS, CONTEXT, CONTINUATION = 32, 64, 16
SAMPLE_COUNTS = (8, 32)
SPREAD_SEEDS = 8
BATCH_1_PAIRS = 4  # pairs timed one at a time (the rate is per pair)


def _pairs(vocab: int) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(
        10, min(vocab, 120000), (PAIRS, CONTEXT + CONTINUATION), generator=gen
    )
    return [([126080, *row[1:CONTEXT].tolist()], row[CONTEXT:].tolist()) for row in ids]


def _params(continuation_len: int, mc_num: int, seed: int):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1,
        prompt_logprobs=0,
        seed=seed,
        extra_args={"likelihood_tokens": continuation_len, "mc_num": mc_num},
    )


def _engine_scores(llm, pairs, mc_num: int, seed: int = 0) -> list[float]:
    outputs = llm.generate(
        [{"prompt_token_ids": c + t} for c, t in pairs],
        [_params(len(t), mc_num, seed) for _, t in pairs],
        use_tqdm=False,
    )
    return [
        sum(next(iter(d.values())).logprob for d in out.prompt_logprobs[-len(t) :])
        for (_, t), out in zip(pairs, outputs, strict=True)
    ]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(checkpoint: str) -> dict:
    from vllm import LLM

    from dynin_vllm.reference.likelihood import log_likelihood
    from dynin_vllm.reference.model import ReferenceLLaDA
    from dynin_vllm.testing.engine_args import ENGINE_ARGS

    torch.set_num_threads(os.cpu_count() or 1)
    reference = ReferenceLLaDA.from_pretrained(checkpoint)
    llm = LLM(model=checkpoint, **ENGINE_ARGS)
    pairs = _pairs(llm.llm_engine.model_config.get_vocab_size())
    _engine_scores(llm, pairs, 8)  # warm-up: the first large batch allocates
    results = {}
    for mc_num in SAMPLE_COUNTS:
        group = min(32, mc_num)
        batched_s, scores = _timed(lambda m=mc_num: _engine_scores(llm, pairs, m))
        single_s, _ = _timed(
            lambda m=mc_num: [
                _engine_scores(llm, [p], m) for p in pairs[:BATCH_1_PAIRS]
            ]
        )
        upstream_s, upstream = _timed(
            lambda m=mc_num, g=group: [
                log_likelihood(reference, c, t, mc_num=m, batch_size=g, seed=0)
                for c, t in pairs[:BATCH_1_PAIRS]
            ]
        )
        spread = [
            _engine_scores(llm, pairs[:1], mc_num, seed)[0]
            for seed in range(SPREAD_SEEDS)
        ]
        max_rel_diff = max(
            abs(a - b) / abs(b) for a, b in zip(scores, upstream, strict=False)
        )
        results[f"mc_num_{mc_num}"] = {
            "mc_batch_size": group,
            "engine_batched_requests_per_s": PAIRS / batched_s,
            "engine_batch1_requests_per_s": BATCH_1_PAIRS / single_s,
            "upstream_loop_requests_per_s": BATCH_1_PAIRS / upstream_s,
            "engine_batched_vs_upstream": (PAIRS / batched_s)
            / (BATCH_1_PAIRS / upstream_s),
            "engine_vs_upstream_max_relative_difference": max_rel_diff,
            "estimate_over_seeds": {
                "mean": statistics.fmean(spread),
                "stdev": statistics.stdev(spread),
                "values": spread,
            },
        }
    a, b = (
        results[f"mc_num_{m}"]["estimate_over_seeds"]["stdev"] for m in SAMPLE_COUNTS
    )
    return {
        "workload": {
            "pairs": PAIRS,
            "context_tokens": CONTEXT,
            "continuation_tokens": CONTINUATION,
            "spread_seeds": SPREAD_SEEDS,
            "batch_1_pairs": BATCH_1_PAIRS,
        },
        "results": results,
        "stdev_ratio_8_over_32": a / b,
        "expected_stdev_ratio": (SAMPLE_COUNTS[1] / SAMPLE_COUNTS[0]) ** 0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dynin")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    report = {
        "machine": machine(),
        "checkpoint": "tiny dynin preset (dynin_vllm.testing.make_checkpoint)",
        **measure(args.dynin),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
