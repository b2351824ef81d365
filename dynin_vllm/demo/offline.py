"""Offline batch generation with ``vllm.LLM`` on a masked-diffusion checkpoint.

    python -m dynin_vllm.demo.offline [MODEL]

With no MODEL it uses the embedded tiny Dynin-Omni checkpoint. Shows chat
prompts through Dynin's template (with the ``/think`` switch), per-request
denoising parameters through ``extra_args``, the per-request denoising
step counts, and infilling (mask tokens in the prompt are filled; the filled
prompt comes back as the request's prompt).
"""

from __future__ import annotations

import argparse

from dynin_vllm.demo.serve import ensure_tiny_checkpoint
from dynin_vllm.serving.launch import CPU_GPU_MEMORY_UTILIZATION, on_cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="checkpoint dir or hub id")
    args = parser.parse_args(argv)
    model = args.model or str(ensure_tiny_checkpoint())

    from vllm import LLM, SamplingParams

    engine_args = {}
    if on_cpu():  # the CPU KV reservation, as ``vllm serve`` gets in the demo
        engine_args["gpu_memory_utilization"] = CPU_GPU_MEMORY_UTILIZATION
    llm = LLM(model=model, max_model_len=1024, **engine_args)

    conversations = [
        [{"role": "user", "content": "What is 12 * 7?"}],
        [{"role": "user", "content": "Write a haiku about the sea."}],
    ]
    settings = [
        # Upstream semantics, one token per step.
        {"mode": "exact", "block_length": 32, "steps": 64},
        # Fast-dLLM: dual cache (the default mode) and confidence-threshold
        # parallel decoding.
        {"mode": "dual", "block_length": 32, "threshold": 0.9},
    ]
    for extra in settings:
        params = SamplingParams(max_tokens=64, temperature=0, extra_args=extra)
        outputs = llm.chat(
            conversations,
            params,
            chat_template_kwargs={"enable_thinking": False},
            use_tqdm=False,
        )
        for out in outputs:
            completion = out.outputs[0]
            steps = completion.spec_decode_metrics
            num_steps = steps.to_dict()["num_spec_steps"] if steps else "n/a"
            print(f"{extra} -> {len(completion.token_ids)} tokens in {num_steps} steps")
            print(f"  {completion.text!r}")

    # Infilling: each <|mdm_mask|> in the prompt is denoised with the answer.
    prompt = "The capital of France is<|mdm_mask|><|mdm_mask|>. It is known for"
    params = SamplingParams(
        max_tokens=32, temperature=0, extra_args={"mode": "exact", "steps": 32}
    )
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    print(f"infill: {prompt!r}")
    print(f"  filled prompt: {out.prompt!r}")
    print(f"  answer: {out.outputs[0].text!r}")


if __name__ == "__main__":
    main()
