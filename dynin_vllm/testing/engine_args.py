"""The engine settings of the CPU tests and benchmarks, defined once.

``ENGINE_ARGS`` are ``vllm.LLM`` / ``EngineArgs`` keyword arguments; pass them
to ``LLM(**ENGINE_ARGS)`` offline, or through :func:`cli_args` to
``vllm serve``, so offline engines and HTTP servers run with the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ENGINE_ARGS", "KV_CACHE_BYTES", "cli_args"]

#: The KV cache of a test or benchmark engine: over 100,000 tokens of the tiny
#: models.
KV_CACHE_BYTES = 1 << 30

#: Engine arguments for a small CPU box: float32 (the references compute in
#: float32), a fixed 1 GiB KV cache (``gpu_memory_utilization`` on CPU is a
#: share of system memory minus what the process already holds, so a second
#: engine in one process would get nothing), a short context, eager mode and
#: the worker in
#: the engine-core process (``uni``, what vLLM picks for one CUDA device; on
#: CPU it would spawn a worker process, 10-15 s more per start). Callers
#: override single keys with ``{**ENGINE_ARGS, key: value}``; more than one
#: rank needs ``distributed_executor_backend="mp"``.
ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "kv_cache_memory_bytes": KV_CACHE_BYTES,
    "max_model_len": 512,
    "max_num_seqs": 64,
    "enforce_eager": True,
    "seed": 0,
    "distributed_executor_backend": "uni",
}


def cli_args(engine_args: Mapping[str, Any]) -> list[str]:
    """``vllm serve`` flags for engine keyword arguments.

    ``{"max_model_len": 512, "enforce_eager": True}`` becomes
    ``["--max-model-len", "512", "--enforce-eager"]``: underscores become
    dashes; ``True`` is the bare flag and ``False`` its ``--no-`` form (vLLM's
    boolean options; leave out a ``store_true``-only flag instead of passing
    ``False``); ``None`` is left out; dicts are passed as JSON and lists or
    tuples as one value each after the flag.
    """
    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, Mapping):
            flags += [flag, json.dumps(dict(value))]
        elif isinstance(value, (list, tuple)):
            flags += [flag, *(str(item) for item in value)]
        else:
            flags += [flag, str(value)]
    return flags
