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
from dynin_vllm.engine.config_hook import PARAMS_VALIDATOR
from dynin_vllm.engine.runner import DiffusionCPUModelRunner, DiffusionGPUModelRunner


@contextlib.contextmanager
def _without_validator(model_config: Any) -> Iterator[None]:
    saved = model_config.logits_processors
    if saved:
        model_config.logits_processors = [p for p in saved if p != PARAMS_VALIDATOR]
    try:
        yield
    finally:
        model_config.logits_processors = saved


class DiffusionCPUWorker(vllm_private.cpu_worker_base()):
    """CPU worker running :class:`DiffusionCPUModelRunner`."""

    def init_device(self) -> None:
        with (
            _without_validator(self.vllm_config.model_config),
            vllm_private.cpu_runner_class_as(DiffusionCPUModelRunner),
        ):
            super().init_device()


class DiffusionGPUWorker(vllm_private.gpu_worker_base()):
    """CUDA worker running :class:`DiffusionGPUModelRunner` (Model Runner V1)."""

    def _make_model_runner(self) -> Any:
        if self.use_v2_model_runner:
            raise RuntimeError(
                "dynin-vllm runs masked-diffusion models on Model Runner V1; unset "
                "VLLM_USE_V2_MODEL_RUNNER."
            )
        with _without_validator(self.vllm_config.model_config):
            return DiffusionGPUModelRunner(self.vllm_config, self.device)
