"""dynin-vllm: serve Dynin-Omni, LLaDA and MMaDA masked-diffusion LLMs in vLLM.

vLLM calls :func:`register` through the ``vllm.general_plugins`` entry point in
every process it starts (front end, engine core, workers, the model-inspection
subprocess). Registration is idempotent, imports nothing heavy and touches no
device.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: The ``architectures`` strings of the checkpoints this plugin serves.
ARCHITECTURES: tuple[str, ...] = ("DyninOmniModelLM", "LLaDAModelLM", "MMadaModelLM")

#: Lazily imported model classes (``module:Class``) by architecture,
#: inspected by vLLM in a subprocess without being imported here.
MODEL_CLASSES: dict[str, str] = {
    "DyninOmniModelLM": "dynin_vllm.model.dynin_omni:DyninOmniForMaskedDiffusion",
    "LLaDAModelLM": "dynin_vllm.model.llada:LLaDAForMaskedDiffusion",
    "MMadaModelLM": "dynin_vllm.model.llada:LLaDAForMaskedDiffusion",
}

_registered = False


def register() -> None:
    """Register configs, the model and the engine defaults with vLLM.

    Raises ``UnsupportedVLLMVersionError`` when the installed vLLM is outside
    the range the engine integration was checked against.
    """
    global _registered
    if _registered:
        return

    from dynin_vllm.compat import check_vllm_version

    check_vllm_version()

    from vllm import ModelRegistry

    from dynin_vllm.configs import register_configs
    from dynin_vllm.engine.config_hook import register_config_hooks
    from dynin_vllm.serving.metrics import install_offline_stat_logger

    register_configs()
    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, MODEL_CLASSES[arch])
    register_config_hooks(ARCHITECTURES)
    # ``vllm serve`` loads our stat logger from its entry point; the offline
    # ``LLMEngine`` loads no stat-logger plugins, so it gets it here.
    install_offline_stat_logger()
    # Infilling requests report their filled prompt (dynin_vllm.engine.infill).
    from dynin_vllm import vllm_private
    from dynin_vllm.engine.infill import apply_filled_prompt

    vllm_private.wrap_request_outputs(apply_filled_prompt)
    # What the parse can only settle once the prompt is rendered: likelihood
    # requests against their prompt's length, the task of media requests.
    from dynin_vllm.engine.validation import settle_rendered_request

    vllm_private.check_rendered_requests(settle_rendered_request)
    vllm_private.refuse_decompression_bombs_as_bad_input()
    # OpenAI's image and speech endpoints in ``vllm serve``, with no flag.
    from dynin_vllm.serving.media_endpoints import MediaEndpoints

    vllm_private.mount_endpoint_plugin(MediaEndpoints)
    from dynin_vllm.serving.log_filters import log_torchcodec_fallback_once

    log_torchcodec_fallback_once()
    _registered = True
