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

    args = {**ENGINE_ARGS, **overrides}
    ranks = args.get("tensor_parallel_size", 1) * args.get("pipeline_parallel_size", 1)
    if ranks > 1 and "distributed_executor_backend" not in overrides:
        args["distributed_executor_backend"] = "mp"
    llm = LLM(model=str(model), **args)
    _undo_service_settings()
    _keep_shared_state_on_shutdown(llm)
    return llm


def _undo_service_settings() -> None:
    """An engine core in the test process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
    sets it up as a server: it freezes vLLM's environment variables and the
    garbage collector's heap. Undo both, so later tests' environments apply
    and finished engines' memory is freed."""
    import gc

    import vllm.envs

    vllm.envs.disable_envs_cache()
    gc.unfreeze()


def _keep_shared_state_on_shutdown(llm) -> None:
    """An in-process engine core tears down the process's distributed state
    when it shuts down (or is collected), which every other engine in the
    process shares (the session engine runs beside module engines). Replace
    that teardown with one of the engine's own parts: its executor (and its
    worker processes, if any) and its scheduler."""
    import weakref

    client = llm.llm_engine.engine_core
    core = getattr(client, "engine_core", None)  # vLLM's InprocClient
    finalizer = getattr(client, "_finalizer", None)
    if core is None or finalizer is None or finalizer.detach() is None:
        return
    # InprocClient.shutdown() would still tear everything down: shutdown()
    # below calls this instead, and the client's own is a no-op.
    client._finalizer = weakref.finalize(client, _shutdown_core, core)
    client.shutdown = lambda *args, **kwargs: client._finalizer()


def _shutdown_core(core) -> None:
    import gc

    core.model_executor.shutdown()
    core.scheduler.shutdown()
    gc.unfreeze()


def shutdown(llm) -> None:
    """Stop an engine now rather than at exit: its processes, or its
    in-process engine core (see :func:`_keep_shared_state_on_shutdown`)."""
    import gc

    engine = getattr(llm, "llm_engine", None)
    client = getattr(engine, "engine_core", None)
    if client is not None:
        client.shutdown()
    gc.collect()


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
