"""The draft "proposer" of the canvas speculative path.

vLLM's ``custom_class`` speculative method gives every request a draft-token
budget without a draft model. The drafts of a masked-diffusion request are its
denoising canvas, which the model runner computes itself
(``DiffusionRunnerMixin.propose_draft_token_ids``), so this class proposes
nothing and loads nothing.
"""

from __future__ import annotations

from typing import Any


class CanvasProposer:
    """Placeholder proposer; the model runner supplies the canvases."""

    def __init__(self, vllm_config: Any) -> None:
        self.vllm_config = vllm_config

    def load_model(self, model: Any) -> None:
        return None

    def propose(self, *args: Any, **kwargs: Any) -> list[list[int]]:
        raise RuntimeError(
            "CanvasProposer.propose should never run: the dynin-vllm model runner "
            "proposes the denoising canvases. Is the dynin-vllm worker in use?"
        )
