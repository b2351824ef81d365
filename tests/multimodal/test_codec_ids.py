"""Vocabulary offsets, EOA/EOS handling, cutting and the repeat collapse."""

from __future__ import annotations

import pytest
import torch

from dynin_vllm.multimodal.ids import (
    VocabLayout,
    collapse_repeats,
    format_speech_units,
    parse_speech_units,
)


class _FakeTokenizer:
    eos_token_id = 126081

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


@pytest.fixture()
def layout() -> VocabLayout:
    # 126349 = length of a tokenizer whose last special id is 126348; offsets must
    # come from this length, not from llm_vocab_size (126464).
    return VocabLayout.from_tokenizer(_FakeTokenizer(126349))


def test_offsets_come_from_tokenizer_length(layout: VocabLayout) -> None:
    assert layout.image_offset == 126349
    assert layout.speech_offset == 126349 + 8192
    assert layout.vocab_end == 126349 + 8192 + 4096
    real = VocabLayout.from_tokenizer(126464)
    assert (real.image_offset, real.speech_offset, real.vocab_end) == (
        126464,
        134656,
        138752,
    )


def test_image_codes_round_trip(layout: VocabLayout) -> None:
    ids = layout.image_codes_to_ids([0, 1, 8191])
    assert ids.tolist() == [126349, 126350, 126349 + 8191]
    assert layout.ids_to_image_codes(ids).tolist() == [0, 1, 8191]
    assert layout.is_image_id(
        torch.tensor([126348, 126349, 134540, 134541])
    ).tolist() == [
        False,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="image code"):
        layout.image_codes_to_ids([8192])
    with pytest.raises(ValueError, match="image id"):
        layout.ids_to_image_codes([126348])


def test_speech_units_round_trip(layout: VocabLayout) -> None:
    ids = layout.speech_units_to_ids(torch.tensor([0, 4095]))
    assert ids.tolist() == [134541, 134541 + 4095]
    assert layout.ids_to_speech_units(ids).tolist() == [0, 4095]
    with pytest.raises(ValueError, match="speech unit"):
        layout.speech_units_to_ids([4096])
    with pytest.raises(ValueError, match="speech id"):
        layout.ids_to_speech_units([134540])


def test_relative_eoa_eos(layout: VocabLayout) -> None:
    ids = torch.tensor([134541 + 7, 126098, 126081])
    rel = layout.speech_ids_to_relative(ids)
    assert rel.tolist() == [7, 4096, 4097]
    assert layout.relative_to_speech_ids(rel).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="neither speech"):
        layout.speech_ids_to_relative([5])
    with pytest.raises(ValueError):
        layout.relative_to_speech_ids([4098])


def test_cut_at_first_eoa_or_eos(layout: VocabLayout) -> None:
    s = layout.speech_offset
    assert layout.cut_speech_ids([s + 3, s + 9, 126098, s + 1, 126081]).tolist() == [
        3,
        9,
    ]
    assert layout.cut_speech_ids([s + 3, 126081, s + 9]).tolist() == [3]
    assert layout.cut_speech_ids([s + 1, s + 2]).tolist() == [1, 2]
    assert layout.cut_speech_ids([126098, s + 2]).tolist() == []
    # A still-masked slot also ends the speech (relative id >= 4096 upstream).
    assert layout.cut_speech_ids([s + 5, 126336, s + 6]).tolist() == [5]
    assert layout.end_of_speech(torch.tensor([s, s, 126081])) == 2


def test_eos_from_tokenizer_and_override() -> None:
    class Tok(_FakeTokenizer):
        eos_token_id = 7

    assert VocabLayout.from_tokenizer(Tok(100)).eos_id == 7
    assert VocabLayout.from_tokenizer(100).eos_id == 126081
    assert VocabLayout.from_tokenizer(100, eoa_id=11).eoa_id == 11


def test_collapse_repeats() -> None:
    assert collapse_repeats([1, 1, 2, 2, 2, 1, 3, 3]).tolist() == [1, 2, 1, 3]
    assert collapse_repeats([]).tolist() == []
    assert collapse_repeats(torch.tensor([5])).tolist() == [5]


def test_unit_string_format() -> None:
    text = format_speech_units([12, 873, 0])
    assert text == "<|speech_12|><|speech_873|><|speech_0|>"
    assert parse_speech_units(text) == [12, 873, 0]
    with pytest.raises(ValueError):
        parse_speech_units("<|speech_1|>hello")
