"""Helpers for tests that start vLLM engines on CPU."""

from __future__ import annotations

import socket
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


class StatsRecorder:
    """Records one engine's scheduler statistics as its front end receives them.

    Reading vLLM's Prometheus gauges would mix engines: several engines in one
    process share one metrics registry.
    """

    def __init__(self, llm) -> None:
        manager = llm.llm_engine.logger_manager
        if manager is None:
            raise ValueError("start the engine with disable_log_stats=False")
        self.kv_cache_usage: list[float] = []
        self.preemptions = 0
        record = manager.record

        def recording(scheduler_stats, iteration_stats, *args, **kwargs):
            if scheduler_stats is not None:
                self.kv_cache_usage.append(scheduler_stats.kv_cache_usage)
            if iteration_stats is not None:
                self.preemptions += iteration_stats.num_preempted_reqs
            return record(scheduler_stats, iteration_stats, *args, **kwargs)

        manager.record = recording
        self._restore = lambda: setattr(manager, "record", record)

    def close(self) -> None:
        self._restore()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
