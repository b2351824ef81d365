"""Worker seam: build our model runner instead of the platform's.

The CUDA worker has a documented hook for this (``_make_model_runner``); the
CPU worker builds its runner inline in ``init_device``, so our CPU worker runs
that method with the runner class it names swapped for ours.

Both hide the front-end-only request validator (``validation.py``) from the
runner while it is built: the V1 runner refuses custom logits processors when
speculative decoding (our canvas path) is on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dynin_vllm import vllm_private
from dynin_vllm.engine.runner import DiffusionCPUModelRunner, DiffusionGPUModelRunner
from dynin_vllm.engine.validation import is_validator_name


@contextlib.contextmanager
def _without_validator(model_config: Any) -> Iterator[None]:
    saved = model_config.logits_processors
    if saved:
        model_config.logits_processors = [p for p in saved if not is_validator_name(p)]
    try:
        yield
    finally:
        model_config.logits_processors = saved


class _InspectionMixin:
    """Worker methods for ``LLM.collective_rpc``."""

    def recent_request_params(self) -> list[tuple[str, dict[str, Any]]]:
        """Parameters of the last admitted requests, as the denoiser runs them."""
        return self.model_runner.recent_request_params()

    def logits_columns(self) -> dict[str, int]:
        """LM-head work so far: rows and columns computed (``columns``: the sum
        over rows), windowed or full width."""
        return self.model_runner.logits_columns()


class DiffusionCPUWorker(_InspectionMixin, vllm_private.cpu_worker_base()):
    """CPU worker running :class:`DiffusionCPUModelRunner`."""

    def init_device(self) -> None:
        with (
            _without_validator(self.vllm_config.model_config),
            vllm_private.cpu_runner_class_as(DiffusionCPUModelRunner),
        ):
            super().init_device()


class DiffusionGPUWorker(_InspectionMixin, vllm_private.gpu_worker_base()):
    """CUDA worker running :class:`DiffusionGPUModelRunner` (Model Runner V1)."""

    def _make_model_runner(self) -> Any:
        if self.use_v2_model_runner:
            raise RuntimeError(
                "dynin-vllm runs masked-diffusion models on Model Runner V1; unset "
                "VLLM_USE_V2_MODEL_RUNNER."
            )
        with _without_validator(self.vllm_config.model_config):
            return DiffusionGPUModelRunner(self.vllm_config, self.device)
