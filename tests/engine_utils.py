"""Helpers for tests that start vLLM engines on CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dynin_vllm.serving.launch import free_port
from dynin_vllm.testing.engine_args import ENGINE_ARGS

__all__ = [
    "ENGINE_ARGS",
    "StatsRecorder",
    "free_port",
    "make_llm",
    "shutdown",
    "temporary_env",
]


@contextlib.contextmanager
def temporary_env(**variables: str) -> Iterator[None]:
    """Set environment variables for a while, then restore the old values."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
