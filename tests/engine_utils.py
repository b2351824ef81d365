"""Helpers for tests that start vLLM engines on CPU."""

from __future__ import annotations

from pathlib import Path

#: Engine arguments for this 2-core CPU box (the CPU KV reservation needs a
#: small ``gpu_memory_utilization``); eager mode keeps start-up short.
ENGINE_ARGS = {
    "dtype": "float32",
    "gpu_memory_utilization": 0.3,
    "max_model_len": 512,
    "max_num_seqs": 64,
    "enforce_eager": True,
    "seed": 0,
}


def make_llm(model: Path, **overrides):
    """A vLLM engine for ``model`` with the CPU test defaults."""
    from vllm import LLM

    return LLM(model=str(model), **{**ENGINE_ARGS, **overrides})


def shutdown(llm) -> None:
    """Stop an engine's background processes now rather than at exit."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()
