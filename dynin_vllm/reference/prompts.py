"""Reference prompt layouts of Dynin-Omni's understanding tasks.

Upstream's exact token sequences, written from its validation code
(AIDASLab/Dynin-Omni ``validation/mmu_generate.py`` ``_concat_mmu_inputs`` and
``validation/speech.py`` ``s2t_eval_collate_fn``), independently of the
engine's processors, which must reproduce them:

- image: ``<|mmu|> <|soi|> codes <|eoi|> BOS tokenize(CHAT(question))``;
- video: the same with ``<|v2t|>``, every frame's codes concatenated in the
  one ``<|soi|> ... <|eoi|>`` span;
- speech recognition: ``<|s2t|> <|soa|> units <|eoa|> tokenize(CHAT(instr))``
  (no BOS is inserted).

and of its generation tasks (``training/prompting_utils.py`` ``t2i_gen_prompt``,
``i2i_prompt``, ``t2s_gen_prompt``), each with upstream's 0/1 attention mask
(0 on the ``[iPAD]`` pads of the text slot):

- text to image: ``[PAD]*p <|t2i|> BOS text EOS <|soi|> M*N <|eoi|>``;
- image editing: ``<|i2i|> <|soi|> src <|eoi|> [PAD]*p BOS text EOS <|soi|>
  M*N <|eoi|>`` (the pads sit in the middle);
- text to speech: ``[PAD]*p <|t2s|> BOS tokenize(CHAT(instr + "\n" + text))
  EOS <|soa|> M*N`` (no ``<|eoa|>``).

``CHAT(u)`` is the user turn followed by the assistant header (no BOS), and it
is tokenized with the tokenizer's own special-token handling, as upstream
calls it. Media ids are vocabulary ids: image codes start at
``len(tokenizer)``, speech units ``IMAGE_CODEBOOK`` after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BOS, EOS = 126080, 126081
MASK = 126336
PAD = 126093  # [iPAD]
SOI, EOI = 126084, 126085
MMU, V2T = 126089, 126100
S2T, SOA, EOA = 126096, 126097, 126098
T2I, I2I, T2S = 126088, 126095, 126099
#: Upstream's text slots: ``max_seq_length + 1`` (T2I, I2I) and
#: ``max_seq_length_text + 1`` (TTS), from ``configs/dynin_omni_demo.yaml``.
T2I_TEXT_SLOT = 129
TTS_TEXT_SLOT = 1025
IMAGE_CODEBOOK = 8192
SPEECH_CODEBOOK = 4096


def chat_turn(text: str) -> str:
    """Upstream's single user turn, ending with the assistant header."""
    return (
        "<|start_header_id|>user<|end_header_id|>\n"
        + text
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )


def _check_range(name: str, ids: Sequence[int], start: int, size: int) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError(f"{name}: no ids")
    bad = [i for i in ids if not start <= i < start + size]
    if bad:
        raise ValueError(
            f"{name}: id {bad[0]} is outside [{start}, {start + size}) "
            "(pass vocabulary ids, not raw codes)"
        )
    return ids


def mmu_prompt(
    tokenizer: Any, media_ids: Sequence[int], question: str, *, video: bool = False
) -> list[int]:
    """Image (or, with ``video``, video) understanding prompt."""
    media = _check_range("media_ids", media_ids, len(tokenizer), IMAGE_CODEBOOK)
    query = tokenizer(chat_turn(question))["input_ids"]
    return [V2T if video else MMU, SOI, *media, EOI, BOS, *query]


def asr_prompt(
    tokenizer: Any, speech_ids: Sequence[int], instruction: str
) -> list[int]:
    """Speech-recognition prompt."""
    start = len(tokenizer) + IMAGE_CODEBOOK
    units = _check_range("speech_ids", speech_ids, start, SPEECH_CODEBOOK)
    query = tokenizer(chat_turn(instruction))["input_ids"]
    return [S2T, SOA, *units, EOA, *query]


def _fit_text_slot(ids: list[int], slot: int) -> tuple[list[int], list[int]]:
    """Left-pad ``ids`` to ``slot`` (mask 0 on the pads), or cut it to
    ``slot - 1`` ids plus EOS, as upstream's prompt builders do."""
    if len(ids) <= slot:
        pads = slot - len(ids)
        return [PAD] * pads + ids, [0] * pads + [1] * len(ids)
    ids = [*ids[: slot - 1], EOS]
    return ids, [1] * slot


def _with_bos(ids: list[int]) -> list[int]:
    if not ids:
        return [BOS]
    return ids if ids[0] == BOS else [BOS, *ids]


def t2i_prompt(
    tokenizer: Any, text: str, num_slots: int, *, text_slot: int = T2I_TEXT_SLOT
) -> tuple[list[int], list[int]]:
    """Text-to-image prompt and attention mask (``t2i_gen_prompt``).

    The text is tokenized with truncation to ``text_slot`` ids, as upstream's
    ``t2i_gen`` task does, then BOS is added when missing.
    """
    text_ids = tokenizer(text, truncation=True, max_length=text_slot)["input_ids"]
    slot, slot_mask = _fit_text_slot([T2I, *_with_bos(list(text_ids)), EOS], text_slot)
    ids = [*slot, SOI, *[MASK] * num_slots, EOI]
    return ids, [*slot_mask, *[1] * (num_slots + 2)]


def i2i_prompt(
    tokenizer: Any,
    text: str,
    source_ids: Sequence[int],
    num_slots: int,
    *,
    text_slot: int = T2I_TEXT_SLOT,
) -> tuple[list[int], list[int]]:
    """Image-editing prompt and attention mask (``i2i_prompt``, no dropout)."""
    source = _check_range("source_ids", source_ids, len(tokenizer), IMAGE_CODEBOOK)
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    slot, slot_mask = _fit_text_slot([BOS, *text_ids, EOS], text_slot)
    ids = [I2I, SOI, *source, EOI, *slot, SOI, *[MASK] * num_slots, EOI]
    mask = [1] * (len(source) + 3) + slot_mask + [1] * (num_slots + 2)
    return ids, mask


def t2s_prompt(
    tokenizer: Any,
    text: str,
    instruction: str,
    num_slots: int,
    *,
    text_slot: int = TTS_TEXT_SLOT,
) -> tuple[list[int], list[int]]:
    """Text-to-speech prompt and attention mask (``t2s_gen_prompt``)."""
    text_ids = tokenizer(chat_turn(f"{instruction}\n{text}"))["input_ids"]
    slot, slot_mask = _fit_text_slot([T2S, *_with_bos(list(text_ids)), EOS], text_slot)
    return [*slot, SOA, *[MASK] * num_slots], [*slot_mask, *[1] * (num_slots + 1)]
