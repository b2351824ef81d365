"""Full-size networks (built on the meta device, no weights) carry exactly the
upstream checkpoints' tensor names and shapes."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import layout

from dynin_vllm.multimodal.emova import (
    EMOVA_OPTIONAL_BUFFERS,
    EMOVA_TRAINING_ONLY,
    EmovaSpeechTokenizer,
)
from dynin_vllm.multimodal.emova_s2u import SpiralConfig
from dynin_vllm.multimodal.emova_u2s import UnitVitsConfig
from dynin_vllm.multimodal.image_tokenizer import MAGVIT_OPTIONAL_BUFFERS
from dynin_vllm.multimodal.loading import _matches
from dynin_vllm.multimodal.magvit2 import MagvitV2


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_magvit2_full_size_layout() -> None:
    with torch.device("meta"):
        model = MagvitV2()
    expected = layout("magvitv2_keys.json")
    assert _shapes(model) == expected
    assert len(expected) == 382
    assert set(MAGVIT_OPTIONAL_BUFFERS) <= set(expected)
    params = sum(p.numel() for p in model.parameters())
    assert params == 55_439_171 + 39_947_833


def test_emova_full_size_layout_with_explicit_skips() -> None:
    with torch.device("meta"):
        model = EmovaSpeechTokenizer()
    expected = layout("emova_speech_tokenizer_keys.json")
    assert len(expected) == 1116
    ours = _shapes(model)
    inference = {
        k: v for k, v in expected.items() if not _matches(k, EMOVA_TRAINING_ONLY)
    }
    assert ours == inference
    # Every tensor we drop is covered by the one skip list, and every entry of the
    # list names real checkpoint tensors (no stale entries).
    dropped = set(expected) - set(ours)
    assert all(_matches(k, EMOVA_TRAINING_ONLY) for k in dropped)
    for entry in EMOVA_TRAINING_ONLY:
        assert any(_matches(k, (entry,)) for k in expected), entry
    assert set(EMOVA_OPTIONAL_BUFFERS) <= set(ours)


def test_emova_weight_norm_and_layernorm_naming() -> None:
    with torch.device("meta"):
        model = EmovaSpeechTokenizer()
    names = set(model.state_dict())
    pos = "encoder.encoder.feature_encoder.block_modules.3.pos_conv.0"
    assert {f"{pos}.weight_g", f"{pos}.weight_v"} <= names
    assert f"{pos}.weight" not in names
    assert "decoder.dec.ups.0.weight_g" in names
    assert "decoder.enc_p.encoder.norm_layers_1.0.GAMMA" in names
    assert "decoder.dp.convs.norms_2.2.BETA" in names


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_rate", 16000),
        ("n_mels", 128),
        ("win_length", 320),
        ("hop_length", 160),
        ("n_fft", 512),
        ("pad_to", 16),
        ("fsq_levels", (8, 8, 8, 8)),
    ],
)
def test_s2u_defaults_are_the_real_network(field: str, value: object) -> None:
    assert getattr(SpiralConfig(), field) == value


def test_u2s_defaults_are_the_real_network() -> None:
    cfg = UnitVitsConfig()
    assert cfg.n_vocab == 4274
    assert cfg.sampling_rate == 22050
    assert cfg.hop_length == 256
    assert cfg.upsample_rates == (8, 8, 2, 2)
    assert cfg.gin_channels == 256
