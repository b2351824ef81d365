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

``CHAT(u)`` is the user turn followed by the assistant header (no BOS), and it
is tokenized with the tokenizer's own special-token handling, as upstream
calls it. Media ids are vocabulary ids: image codes start at
``len(tokenizer)``, speech units ``IMAGE_CODEBOOK`` after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BOS = 126080
SOI, EOI = 126084, 126085
MMU, V2T = 126089, 126100
S2T, SOA, EOA = 126096, 126097, 126098
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
