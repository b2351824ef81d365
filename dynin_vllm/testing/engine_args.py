"""The engine settings of the CPU tests and benchmarks, defined once.

``ENGINE_ARGS`` are ``vllm.LLM`` / ``EngineArgs`` keyword arguments; pass them
to ``LLM(**ENGINE_ARGS)`` offline, or through :func:`cli_args` to
``vllm serve``, so offline engines and HTTP servers run with the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dynin_vllm.serving.launch import CPU_GPU_MEMORY_UTILIZATION

__all__ = ["ENGINE_ARGS", "cli_args"]

#: Engine arguments for a small CPU box: float32 (the references compute in
#: float32), a small KV reservation (on CPU ``gpu_memory_utilization`` is a
#: fraction of system memory), a short context, and eager mode for a short
#: start-up. Callers override single keys with ``{**ENGINE_ARGS, key: value}``.
ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "gpu_memory_utilization": CPU_GPU_MEMORY_UTILIZATION,
    "max_model_len": 512,
    "max_num_seqs": 64,
    "enforce_eager": True,
    "seed": 0,
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
