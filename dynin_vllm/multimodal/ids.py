"""Image-code and speech-unit <-> vocabulary-id mapping of Dynin-Omni.

The shared vocabulary is ``[text | image codes | speech units]``. Upstream
computes both offsets from the *text tokenizer's length*, never from
``llm_vocab_size``:

* image id  = ``len(tokenizer) + code`` (``validation/mmu_generate.py``)
* speech id = ``len(tokenizer) + image_codebook_size + unit`` (``validation/speech.py``)

Inside the speech decoding loop (``t2s_generate_mmu_like``) two extra relative
ids exist: ``speech_codebook_size`` (4096) stands for ``<|eoa|>`` (126098) and
``speech_codebook_size + 1`` (4097) for the text EOS (126081).

Take the tokenizer (or its length) as an argument; nothing here hard-codes the
text vocabulary size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

#: MAGVIT-v2 codebook size.
IMAGE_CODEBOOK_SIZE = 8192
#: EMOVA FSQ codebook size (8*8*8*8).
SPEECH_CODEBOOK_SIZE = 4096
#: ``<|eoa|>`` (end of audio), a reserved LLaDA id used by Dynin's prompting.
EOA_TOKEN_ID = 126098
#: ``<|endoftext|>``, the LLaDA EOS.
EOS_TOKEN_ID = 126081

IdsLike = torch.Tensor | Iterable[int]

_UNIT_RE = re.compile(r"<\|speech_(\d+)\|>")


def _as_long(values: IdsLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.long()
    return torch.as_tensor(list(values), dtype=torch.long)


def text_vocab_size(tokenizer: Any) -> int:
    """``len(tokenizer)``; an ``int`` is passed through."""
    if isinstance(tokenizer, int):
        return tokenizer
    return len(tokenizer)


@dataclass(frozen=True)
class VocabLayout:
    """Offsets of the image and speech sub-vocabularies.

    Build it with :meth:`from_tokenizer`. ``text_size`` is ``len(tokenizer)``.
    """

    text_size: int
    image_codebook_size: int = IMAGE_CODEBOOK_SIZE
    speech_codebook_size: int = SPEECH_CODEBOOK_SIZE
    eoa_id: int = EOA_TOKEN_ID
    eos_id: int = EOS_TOKEN_ID

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        image_codebook_size: int = IMAGE_CODEBOOK_SIZE,
        speech_codebook_size: int = SPEECH_CODEBOOK_SIZE,
        eoa_id: int = EOA_TOKEN_ID,
        eos_id: int | None = None,
    ) -> VocabLayout:
        """Offsets from a tokenizer (or its length); EOS from ``tokenizer.eos_token_id``
        when available, else 126081. ``<|eoa|>`` is the fixed reserved id 126098, as in
        Dynin's ``UniversalPrompting``."""
        if eos_id is None:
            eos_id = getattr(tokenizer, "eos_token_id", None)
            if eos_id is None:
                eos_id = EOS_TOKEN_ID
        return cls(
            text_size=text_vocab_size(tokenizer),
            image_codebook_size=image_codebook_size,
            speech_codebook_size=speech_codebook_size,
            eoa_id=int(eoa_id),
            eos_id=int(eos_id),
        )

    # ------------------------------------------------------------------ offsets

    @property
    def image_offset(self) -> int:
        """First image id (``len(tokenizer)``)."""
        return self.text_size

    @property
    def speech_offset(self) -> int:
        """First speech id (``len(tokenizer) + image_codebook_size``)."""
        return self.text_size + self.image_codebook_size

    @property
    def vocab_end(self) -> int:
        """One past the last speech id."""
        return self.speech_offset + self.speech_codebook_size

    @property
    def relative_eoa(self) -> int:
        """Relative speech id standing for ``<|eoa|>`` (4096)."""
        return self.speech_codebook_size

    @property
    def relative_eos(self) -> int:
        """Relative speech id standing for EOS (4097)."""
        return self.speech_codebook_size + 1

    # ------------------------------------------------------------------ images

    def image_codes_to_ids(self, codes: IdsLike) -> torch.Tensor:
        """Image codes in ``[0, image_codebook_size)`` -> vocabulary ids."""
        codes = _as_long(codes)
        _check_range(codes, 0, self.image_codebook_size, "image code")
        return codes + self.image_offset

    def ids_to_image_codes(self, ids: IdsLike) -> torch.Tensor:
        """Vocabulary ids in the image range -> image codes (error otherwise)."""
        ids = _as_long(ids)
        _check_range(ids, self.image_offset, self.speech_offset, "image id")
        return ids - self.image_offset

    def is_image_id(self, ids: IdsLike) -> torch.Tensor:
        """Boolean mask of ids in the image range."""
        ids = _as_long(ids)
        return (ids >= self.image_offset) & (ids < self.speech_offset)

    # ------------------------------------------------------------------ speech

    def speech_units_to_ids(self, units: IdsLike) -> torch.Tensor:
        """Speech units in ``[0, speech_codebook_size)`` -> vocabulary ids."""
        units = _as_long(units)
        _check_range(units, 0, self.speech_codebook_size, "speech unit")
        return units + self.speech_offset

    def ids_to_speech_units(self, ids: IdsLike) -> torch.Tensor:
        """Vocabulary ids in the speech range -> units (error otherwise)."""
        ids = _as_long(ids)
        _check_range(ids, self.speech_offset, self.vocab_end, "speech id")
        return ids - self.speech_offset

    def is_speech_id(self, ids: IdsLike) -> torch.Tensor:
        """Boolean mask of ids in the speech-unit range (EOA/EOS excluded)."""
        ids = _as_long(ids)
        return (ids >= self.speech_offset) & (ids < self.vocab_end)

    def speech_ids_to_relative(self, ids: IdsLike) -> torch.Tensor:
        """Speech ids, ``<|eoa|>`` and EOS -> relative ids ``0..4097``.

        Units map to ``0..4095``, ``<|eoa|>`` to 4096 and EOS to 4097 (the 4098-way
        sub-vocabulary of ``t2s_generate``). Any other id is an error.
        """
        ids = _as_long(ids)
        rel = ids - self.speech_offset
        rel = torch.where(
            ids == self.eoa_id, torch.full_like(ids, self.relative_eoa), rel
        )
        rel = torch.where(
            ids == self.eos_id, torch.full_like(ids, self.relative_eos), rel
        )
        ok = self.is_speech_id(ids) | (ids == self.eoa_id) | (ids == self.eos_id)
        if not bool(ok.all()):
            bad = ids[~ok][:5].tolist()
            raise ValueError(f"ids {bad} are neither speech units, <|eoa|> nor EOS")
        return rel

    def relative_to_speech_ids(self, relative: IdsLike) -> torch.Tensor:
        """Inverse of :meth:`speech_ids_to_relative`."""
        rel = _as_long(relative)
        _check_range(rel, 0, self.speech_codebook_size + 2, "relative speech id")
        ids = rel + self.speech_offset
        ids = torch.where(
            rel == self.relative_eoa, torch.full_like(rel, self.eoa_id), ids
        )
        return torch.where(
            rel == self.relative_eos, torch.full_like(rel, self.eos_id), ids
        )

    def end_of_speech(self, ids: IdsLike) -> int:
        """Index of the first id that is not a speech unit (``len(ids)`` if none).

        ``<|eoa|>`` and EOS end the speech; so does any other non-unit id (e.g. a
        still-masked slot), which upstream also treats as the end because its
        relative id is ``>= 4096``.
        """
        ids = _as_long(ids).reshape(-1)
        stop = (~self.is_speech_id(ids)).nonzero()
        return int(stop[0]) if stop.numel() else int(ids.numel())

    def cut_speech_ids(self, ids: IdsLike) -> torch.Tensor:
        """Generated speech ids -> units before the first ``<|eoa|>``/EOS (or other
        non-unit id), as the final step of ``t2s_generate_mmu_like`` does."""
        ids = _as_long(ids).reshape(-1)
        return ids[: self.end_of_speech(ids)] - self.speech_offset


def _check_range(values: torch.Tensor, low: int, high: int, what: str) -> None:
    if values.numel() == 0:
        return
    bad = (values < low) | (values >= high)
    if bool(bad.any()):
        sample = values[bad][:5].tolist()
        raise ValueError(f"{what}s {sample} outside [{low}, {high})")


def collapse_repeats(units: IdsLike) -> torch.Tensor:
    """Drop consecutive duplicates, as EMOVA's ``reduced=True``: 1 1 2 1 -> 1 2 1."""
    units = _as_long(units).reshape(-1)
    if units.numel() <= 1:
        return units.clone()
    keep = torch.ones_like(units, dtype=torch.bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


def format_speech_units(units: IdsLike) -> str:
    """Units -> EMOVA's string form ``"<|speech_12|><|speech_873|>..."``."""
    return "".join(f"<|speech_{int(u)}|>" for u in _as_long(units).reshape(-1).tolist())


def parse_speech_units(text: str) -> list[int]:
    """Inverse of :func:`format_speech_units` (anything between tokens is an error)."""
    units = [int(m) for m in _UNIT_RE.findall(text)]
    if _UNIT_RE.sub("", text).strip():
        raise ValueError("speech unit string holds text outside <|speech_N|> tokens")
    return units
