"""Reference samplers of Dynin-Omni's generation tasks (``dynin.md`` §5.3-§5.5).

Plain loops over one request, written from upstream's
``DyninOmniModelLM.t2i_generate`` / ``i2i_generate`` (MaskGIT) and
``t2s_generate_mmu_like`` (speech), independently of the engine:

- every step forwards the whole padded sequence (``exact`` semantics), with the
  prompt's 0/1 mask as a key mask, as upstream's ``attention_bias`` (pads are
  kept in place; the engine drops or skips them instead);
- the unconditional row of MaskGIT guidance is upstream's: the first
  ``uncond_prefix_len`` tokens of the unconditional prompt, then the
  conditional row's tokens (T2I's ``resolution + 1 = 513`` by default, which
  keeps 383 image slots masked in that row; 129 is the text slot alone; I2I's
  337 makes the two rows' ids equal, so only the key mask differs);
- TTS guidance uses the same text with every speech slot masked.

Temperature 0 is greedy (argmax candidates, no re-masking noise), an extension
of upstream, where the MaskGIT candidates are always drawn at temperature 1
(the ``temperature`` only scales the re-masking noise) and TTS has no greedy
path. With ``temperature > 0`` the draws come from ``generator`` as upstream's
(multinomial, then the Gumbel uniforms), in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dynin_vllm.reference.model import ReferenceLLaDA
from dynin_vllm.reference.prompts import EOA, EOS, IMAGE_CODEBOOK, MASK, SPEECH_CODEBOOK

#: Upstream's uncond-prefix lengths (``resolution + 1`` with the default
#: ``resolution`` of each function, whatever the image size).
T2I_UNCOND_PREFIX = 513
I2I_UNCOND_PREFIX = 337


def _logits(
    model: ReferenceLLaDA, rows: list[list[int]], masks: list[list[int]]
) -> torch.Tensor:
    ids = torch.tensor(rows, dtype=torch.int64)
    key_mask = torch.tensor(masks, dtype=torch.bool)
    return model.forward(ids, key_mask=key_mask)[0]


def maskgit_mask_len(num_slots: int, step: int, steps: int, unknown: int) -> int:
    """Upstream's masks left after ``step``: ``floor(N cos(pi/2 (s+1)/S))`` in
    float32, clamped to ``[1, unknown - 1]`` (the clamp may exceed the bound
    when only one slot is unknown, as upstream's ``max`` after ``min``)."""
    ratio = torch.tensor(1.0 * (step + 1) / steps)
    mask_ratio = torch.cos(ratio * math.pi * 0.5)
    mask_len = int((num_slots * mask_ratio).floor())
    return max(1, min(unknown - 1, mask_len))


def maskgit_generate(
    model: ReferenceLLaDA,
    prompt: Sequence[int],
    attention_mask: Sequence[int],
    *,
    num_slots: int,
    codebook_start: int,
    steps: int,
    guidance_scale: float = 0.0,
    uncond_prompt: Sequence[int] | None = None,
    uncond_attention_mask: Sequence[int] | None = None,
    uncond_prefix_len: int = T2I_UNCOND_PREFIX,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, list[int]], None] | None = None,
) -> list[int]:
    """MaskGIT over the ``num_slots`` image slots before the prompt's last token.

    ``codebook_start`` is the vocabulary id of code 0 (``len(tokenizer)``).
    Returns the image codes (``0..8191``) of the last step's samples.
    ``on_step(step, codes)`` sees each step's samples (every slot filled,
    before the re-masking), as upstream's ``t2i_generate_decoding_stepwise``
    decodes them.
    """
    ids = list(prompt)
    mask = list(attention_mask)
    start, end = len(ids) - num_slots - 1, len(ids) - 1
    guided = guidance_scale > 0
    if guided and (uncond_prompt is None or uncond_attention_mask is None):
        raise ValueError("guidance needs the unconditional prompt and its mask")
    if guided:
        uncond_prefix = list(uncond_prompt)[:uncond_prefix_len]
    noise_temperature = float(temperature)
    sampled = torch.zeros(num_slots, dtype=torch.int64)
    for step in range(steps):
        if guided:
            uncond = uncond_prefix + ids[uncond_prefix_len:]
            both = _logits(model, [ids, uncond], [mask, list(uncond_attention_mask)])
            cond_logits, uncond_logits = both[0], both[1]
            logits = (1 + guidance_scale) * cond_logits - guidance_scale * uncond_logits
        else:
            logits = _logits(model, [ids], [mask])[0]
        logits = logits[start:end, codebook_start : codebook_start + IMAGE_CODEBOOK]
        probs = logits.softmax(dim=-1)
        if temperature > 0:
            sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            sampled = probs.argmax(dim=-1)
        current = torch.tensor(ids[start:end])
        unknown = current == MASK
        sampled = torch.where(unknown, sampled, current - codebook_start)
        if on_step is not None:
            on_step(step, sampled.tolist())
        ratio = 1.0 * (step + 1) / steps
        mask_len = maskgit_mask_len(num_slots, step, steps, int(unknown.sum()))
        selected = probs.gather(-1, sampled[:, None])[:, 0]
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        noise_temperature = noise_temperature * (1.0 - ratio)
        confidence = torch.log(selected.clamp(min=1e-20))
        if temperature > 0:
            uniform = torch.zeros_like(selected).uniform_(0, 1, generator=generator)
            gumbel = -torch.log((-torch.log(uniform.clamp(min=1e-20))).clamp(min=1e-20))
            confidence = confidence + noise_temperature * gumbel
        cut = torch.sort(confidence).values[mask_len]
        remask = confidence < cut
        ids[start:end] = torch.where(remask, MASK, sampled + codebook_start).tolist()
    return sampled.tolist()


def speech_generate(
    model: ReferenceLLaDA,
    prompt: Sequence[int],
    attention_mask: Sequence[int],
    *,
    speech_start: int,
    max_new_tokens: int | None = None,
    steps: int = 383,
    block_length: int = 128,
    cfg_scale: float = 0.0,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int]]:
    """Upstream's ``t2s_generate_mmu_like`` over the prompt's mask ids.

    ``speech_start`` is the vocabulary id of unit 0 (``len(tokenizer) + 8192``).
    Returns ``(region, units)``: the whole speech region's final ids, and the
    units (``0..4095``) before the first ``<|eoa|>``, EOS or mask.
    """
    ids = list(prompt)
    mask = list(attention_mask)
    region = [i for i, t in enumerate(ids) if t == MASK]
    if not region or region != list(range(region[0], region[0] + len(region))):
        raise ValueError("the prompt needs one contiguous run of mask ids")
    total = len(region) if max_new_tokens is None else min(max_new_tokens, len(region))
    block_length = max(1, min(block_length, total))
    num_blocks = math.ceil(total / block_length)
    inner_steps = max(1, steps // num_blocks)
    speech = region[:total]
    classes = [*range(speech_start, speech_start + SPEECH_CODEBOOK), EOA, EOS]
    columns = torch.tensor(classes)
    for block in range(num_blocks):
        positions = speech[block * block_length : (block + 1) * block_length]
        base, rem = divmod(len(positions), inner_steps)
        counts = [base + (1 if i < rem else 0) for i in range(inner_steps)]
        for count in counts:
            if cfg_scale > 0:
                uncond = list(ids)
                for p in speech:
                    uncond[p] = MASK
                both = _logits(model, [ids, uncond], [mask, mask])
                logits = both[1] + (cfg_scale + 1.0) * (both[0] - both[1])
            else:
                logits = _logits(model, [ids], [mask])[0]
            restricted = logits[positions][:, columns]
            if temperature > 0:
                restricted = restricted / max(temperature, 1e-5)
            probs = restricted.softmax(dim=-1)
            if temperature > 0:
                chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                chosen = probs.argmax(dim=-1)
            selected = probs.gather(-1, chosen[:, None])[:, 0].tolist()
            open_slots = [j for j, p in enumerate(positions) if ids[p] == MASK]
            take = min(count, len(open_slots))
            # Most confident first; ties to the lower position.
            ranked = sorted(open_slots, key=lambda j: (-selected[j], j))[:take]
            for j in ranked:
                ids[positions[j]] = classes[int(chosen[j])]
            if all(ids[p] != MASK for p in positions):
                break
    final = [ids[p] for p in region]
    units: list[int] = []
    for token in final:
        if not speech_start <= token < speech_start + SPEECH_CODEBOOK:
            break
        units.append(token - speech_start)
    return final, units


__all__ = [
    "I2I_UNCOND_PREFIX",
    "T2I_UNCOND_PREFIX",
    "maskgit_generate",
    "maskgit_mask_len",
    "speech_generate",
]
