"""lm-evaluation-harness model ``dynin-completions``: masked-diffusion likelihoods.

lm-eval's ``local-completions`` model scores a loglikelihood request by
sending ``context + continuation`` with ``echo``, ``logprobs=1`` and
``max_tokens=1``, and summing the continuation's ``token_logprobs``. For a
masked-diffusion model those must be the Monte Carlo ELBO of the
continuation given the context, which depends on where the context ends;
the payload does not say. ``dynin-completions`` is ``local-completions``
with one change: each loglikelihood request also sends that split, and the
estimator's settings, in ``vllm_xargs`` (``likelihood_tokens``, ``mc_num``,
``mc_batch_size``; the payload's ``seed`` seeds the estimate). Generation
requests are unchanged.

Each HTTP request carries one prompt (the split is per request): run with
``batch_size=1`` (the default) and ``num_concurrent=N``, so the server
batches the Monte Carlo rows of ``N`` requests in its engine steps.

Usage (the ``lm-eval`` extra installs lm-eval)::

    SERVER=model=snu-aidas/Dynin-Omni,base_url=http://localhost:8000/v1/completions
    dynin-lm-eval --model dynin-completions --tasks arc_easy \\
        --model_args $SERVER,num_concurrent=8,mc_num=128

``dynin-lm-eval`` is lm-eval's command line with this model registered; in
Python, import this module before ``lm_eval.simple_evaluate``.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

#: The model name this module registers with lm-eval.
MODEL_NAME = "dynin-completions"


@register_model(MODEL_NAME)
class DyninCompletionsAPI(LocalCompletionsAPI):
    """``local-completions`` whose loglikelihood requests carry the
    context/continuation split and the Monte Carlo settings.

    Extra ``model_args``: ``mc_num`` (Monte Carlo rows per estimate, default
    128, as LLaDA's evaluation) and ``mc_batch_size`` (rows per stratified
    group, default ``min(32, mc_num)``).
    """

    def __init__(
        self, mc_num: int = 128, mc_batch_size: int | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        if self._batch_size != 1:
            raise ValueError(
                f"{MODEL_NAME} sends one prompt per request (the continuation "
                f"split is per prompt); use batch_size=1 with num_concurrent=N "
                f"instead of batch_size={self._batch_size}."
            )
        self.mc_num = int(mc_num)
        self.mc_batch_size = None if mc_batch_size is None else int(mc_batch_size)
        self._pending_ctxlens: list[int] | None = None

    def batch_loglikelihood_requests(self, chunks: Any) -> Any:
        inputs, ctxlens, cache_keys = super().batch_loglikelihood_requests(chunks)
        self._pending_ctxlens = ctxlens  # the sequential path's next call
        return inputs, ctxlens, cache_keys

    def model_call(self, messages: Any, *, generate: bool = True, **kwargs: Any):
        if not generate:
            kwargs["continuations"] = _continuations(messages, self._pending_ctxlens)
        return super().model_call(messages, generate=generate, **kwargs)

    async def amodel_call(self, session: Any, sem: Any, messages: Any, **kwargs: Any):
        if not kwargs.get("generate", True):
            kwargs["continuations"] = _continuations(messages, kwargs.get("ctxlens"))
        return await super().amodel_call(session, sem, messages, **kwargs)

    def _create_payload(
        self,
        messages: Any,
        generate: bool = False,
        gen_kwargs: dict | None = None,
        seed: int = 1234,
        eos: Any = None,
        continuations: list[int] | None = None,
        **kwargs: Any,
    ) -> dict:
        payload = super()._create_payload(
            messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos
        )
        if generate:
            return payload
        if continuations is None or len(continuations) != 1:
            raise RuntimeError(
                f"{MODEL_NAME}: a loglikelihood request must carry exactly one "
                "prompt and its context length"
            )
        xargs: dict[str, Any] = {
            "likelihood_tokens": continuations[0],
            "mc_num": self.mc_num,
        }
        if self.mc_batch_size is not None:
            xargs["mc_batch_size"] = self.mc_batch_size
        payload["vllm_xargs"] = xargs
        return payload


def _continuations(messages: Any, ctxlens: list[int] | None) -> list[int] | None:
    """Continuation lengths (tokens) of loglikelihood prompts (token lists)."""
    if ctxlens is None:
        return None
    return [len(m) - c for m, c in zip(messages, ctxlens, strict=True)]


def main() -> None:
    """``dynin-lm-eval``: lm-eval's command line with ``dynin-completions``."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
