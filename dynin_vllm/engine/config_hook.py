"""Engine defaults applied automatically for our architectures.

``vllm serve <checkpoint>`` and ``LLM(model=...)`` need no extra flags: vLLM
runs :meth:`MaskedDiffusionConfigHook.verify_and_update_config` for the
``architectures`` of the checkpoint before anything else is configured, and it
sets up the masked-diffusion engine:

- the denoising canvas rides vLLM's speculative-decoding data path: a
  ``custom_class`` speculative config gives every request a draft budget
  without a draft model;
- our scheduler, worker and model runner (see ``dynin_vllm.engine``);
- synchronous scheduling (asynchronous V1 scheduling keeps drafts on the
  device, so canvases would never reach the scheduler);
- no automatic prefix caching (the KV of a bidirectional prompt is not a
  function of its token prefix) and no chunked prefill (a chunked prompt would
  become block-causal across chunks);
- bidirectional attention backends;
- piecewise CUDA graphs (V1's full graphs assume uniform decode batches);
- the one parse of request parameters, with the checkpoint's defaults, in
  the front end (clear 400 errors; see ``validation.py``).
"""

from __future__ import annotations

from typing import Any

from vllm.logger import init_logger

from dynin_vllm import vllm_private
from dynin_vllm.multimodal.settings import DEFAULT_VIDEO_FRAMES, VIDEO_FRAMES_KEY

logger = init_logger(__name__)

SCHEDULER_CLS = "dynin_vllm.engine.scheduler.DiffusionScheduler"
CPU_WORKER_CLS = "dynin_vllm.engine.worker.DiffusionCPUWorker"
GPU_WORKER_CLS = "dynin_vllm.engine.worker.DiffusionGPUWorker"
PROPOSER_CLS = "dynin_vllm.engine.proposer.CanvasProposer"


class EngineConfigError(ValueError):
    """An engine option conflicts with masked-diffusion generation."""


def configure_engine(vllm_config: Any) -> None:
    """Apply the masked-diffusion engine settings to ``vllm_config`` in place."""
    from vllm.platforms import current_platform

    model_config = vllm_config.model_config
    model_config.hf_config.check_supported()
    max_model_len = model_config.max_model_len

    cache = vllm_config.cache_config
    if cache.enable_prefix_caching:
        logger.info(
            "dynin-vllm: disabling automatic prefix caching; the KV of a "
            "bidirectional prompt depends on the whole prompt."
        )
        cache.enable_prefix_caching = False

    sched = vllm_config.scheduler_config
    if sched.async_scheduling:
        logger.warning(
            "dynin-vllm: asynchronous scheduling is not supported for "
            "masked-diffusion models; using synchronous scheduling."
        )
    sched.async_scheduling = False
    sched.enable_chunked_prefill = False
    sched.long_prefill_token_threshold = 0
    # A whole sequence (prompt plus answer canvas) must fit in one step.
    if sched.max_num_batched_tokens < max_model_len:
        sched.max_num_batched_tokens = max_model_len
        sched.max_num_encoder_input_tokens = max_model_len
        sched.encoder_cache_size = max_model_len
    if (
        sched.max_num_scheduled_tokens is not None
        and sched.max_num_scheduled_tokens < max_model_len
    ):
        sched.max_num_scheduled_tokens = max_model_len
    _decode_upstreams_video_frames(model_config)
    if sched.scheduler_cls is None:
        sched.scheduler_cls = SCHEDULER_CLS
    elif sched.scheduler_cls != SCHEDULER_CLS:
        raise EngineConfigError(
            f"--scheduler-cls {sched.scheduler_cls} cannot drive a masked-diffusion "
            f"model; leave it unset ({SCHEDULER_CLS} is selected automatically)."
        )

    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        raise EngineConfigError(
            "Pipeline parallelism is not supported for masked-diffusion models: "
            "the denoiser needs the logits on the rank that proposes the "
            "canvases. Use --tensor-parallel-size (and --data-parallel-size) "
            "instead."
        )
    if parallel.worker_cls == "auto":
        parallel.worker_cls = (
            CPU_WORKER_CLS if current_platform.is_cpu() else GPU_WORKER_CLS
        )

    if vllm_config.speculative_config is not None:
        raise EngineConfigError(
            "Speculative decoding cannot be combined with masked-diffusion "
            "models: dynin-vllm uses the speculative path for the denoising canvas."
        )
    # The canvas of a request is at most its whole answer region.
    vllm_config.speculative_config = vllm_private.make_speculative_config(
        vllm_config, PROPOSER_CLS, max_model_len
    )

    vllm_config.attention_config.use_non_causal = True

    # Full CUDA graphs of V1 capture uniform decode batches of 1 + draft-budget
    # tokens; canvases never form those, so capture piecewise graphs only.
    compilation = vllm_config.compilation_config
    if compilation.cudagraph_mode is None:
        from vllm.config import CUDAGraphMode

        compilation.cudagraph_mode = CUDAGraphMode.PIECEWISE

    # Report denoising steps per request (vLLM's per-request speculative
    # metrics: ``num_spec_steps`` is the number of denoising forwards).
    observability = vllm_config.observability_config
    if observability.per_request_spec_decode_metrics == "none":
        observability.per_request_spec_decode_metrics = "summary"

    _install_validator(model_config)


def _install_validator(model_config: Any) -> None:
    """List this engine's front-end parse of request parameters (the one parse)
    in ``model_config.logits_processors``, after checking the defaults."""
    from dynin_vllm.diffusion.params import DiffusionParamError, parse_params
    from dynin_vllm.engine.defaults import generation_defaults
    from dynin_vllm.engine.validation import is_validator_name, validator_name

    defaults = generation_defaults(model_config)
    try:
        parse_params(None, defaults)
    except DiffusionParamError as err:
        raise EngineConfigError(
            f"The checkpoint's generation_config.json or --override-generation-config "
            f"sets an invalid masked-diffusion default: {err}"
        ) from err
    name = validator_name(defaults, vocab_size=model_config.get_vocab_size())
    processors = [
        p for p in model_config.logits_processors or [] if not is_validator_name(p)
    ]
    model_config.logits_processors = [*processors, name]


def _decode_upstreams_video_frames(model_config: Any) -> None:
    """Have vLLM's video loader decode the frames upstream samples (the
    processor's ``video_num_frames``, by the same ``np.linspace`` rule)
    unless the server chose its own (``--media-io-kwargs``)."""
    mm = getattr(model_config, "multimodal_config", None)
    if mm is None:
        return
    video = dict((mm.media_io_kwargs or {}).get("video", {}))
    if "num_frames" in video or "fps" in video:
        return
    settings = mm.mm_processor_kwargs or {}
    video["num_frames"] = settings.get(VIDEO_FRAMES_KEY, DEFAULT_VIDEO_FRAMES)
    mm.media_io_kwargs = {**(mm.media_io_kwargs or {}), "video": video}


class MaskedDiffusionConfigHook:
    """Per-architecture hook registered in vLLM's ``MODELS_CONFIG_MAP``."""

    @staticmethod
    def verify_and_update_config(vllm_config: Any) -> None:
        configure_engine(vllm_config)

    @staticmethod
    def verify_and_update_model_config(model_config: Any) -> None:
        return None


def register_config_hooks(architectures: tuple[str, ...]) -> None:
    """Register :class:`MaskedDiffusionConfigHook` for ``architectures``."""
    base = vllm_private.verify_and_update_config_base()
    hook = type("MaskedDiffusionConfigHook", (MaskedDiffusionConfigHook, base), {})
    for arch in architectures:
        vllm_private.register_config_hook(arch, hook)
