"""EMOVA speech tokenizer through the production loader: audio -> units ->
22,050 Hz waveform, the featurizer, style conditions and strict loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from codec_helpers import speech_like
from safetensors.torch import load_file, save_file

from dynin_vllm.multimodal import emova as emova_module
from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.emova import (
    DEFAULT_CONDITION,
    EMOVA_OPTIONAL_BUFFERS,
    EMOVA_TRAINING_ONLY,
    STYLE_CONDITIONS,
    EmovaSpeechTokenizer,
    load_emova,
)
from dynin_vllm.multimodal.media import MediaError, load_audio, resample_audio

WEIGHTS = "model.safetensors"


def _unit_count(samples: int) -> int:
    frames = math.ceil(samples / 160)
    return math.ceil(math.ceil(frames / 2) / 2)


# S2U


def test_encode_file_rate_and_no_repeats(
    emova: EmovaSpeechTokenizer, tmp_path: Path
) -> None:
    seconds = 2.0
    mono = speech_like(seconds, rate=22050)
    path = tmp_path / "speech.wav"
    sf.write(path, np.stack([mono, 0.5 * mono], axis=1), 22050)  # stereo, 22.05 kHz
    units = emova.encode(path)
    assert units.dim() == 1 and units.dtype == torch.long
    assert 0 < units.numel() <= 25 * seconds
    assert int(units.min()) >= 0 and int(units.max()) < 4096
    assert bool((units[1:] != units[:-1]).all())
    raw = emova.encode(path, reduced=False)
    assert raw.numel() == _unit_count(32000)  # 40 ms per unit after resampling
    assert torch.equal(emova_module.collapse_repeats(raw), units)


def test_encode_waveform_matches_file(
    emova: EmovaSpeechTokenizer, tmp_path: Path
) -> None:
    wave = speech_like(1.0)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    assert torch.equal(emova.encode(path), emova.encode(wave, 16000))
    with pytest.raises(ValueError, match=r"sample_rate"):
        emova.encode(wave)


def test_encode_batch_lengths(emova: EmovaSpeechTokenizer) -> None:
    a, b = speech_like(1.0, seed=1), speech_like(0.37, seed=2)
    units = emova.encode_batch([a, b], reduced=False)
    assert [u.numel() for u in units] == [_unit_count(16000), _unit_count(len(b))]
    alone = emova.encode_batch([a], reduced=False)[0]
    assert torch.equal(alone, units[0])  # the longest item is unaffected by padding


def test_long_audio_is_chunked(
    emova: EmovaSpeechTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wave = speech_like(1.2)
    monkeypatch.setattr(emova_module, "MAX_SINGLE_PASS_SAMPLES", 8000)
    monkeypatch.setattr(emova_module, "CHUNK_SAMPLES", 6400)
    units = emova.encode(wave, 16000, reduced=False)
    chunks = [wave[i : i + 6400] for i in range(0, len(wave), 6400)]
    expected = torch.cat([emova.encode_batch([c], reduced=False)[0] for c in chunks])
    assert torch.equal(units, expected)
    assert units.numel() == sum(_unit_count(len(c)) for c in chunks)


def test_featurizer_frames_mask_and_normalisation(emova: EmovaSpeechTokenizer) -> None:
    featurizer = emova.encoder.encoder.wav2spec.featurizer
    wave = torch.from_numpy(speech_like(0.5))[None]
    n = wave.shape[1]
    specs, lengths = featurizer(wave, torch.tensor([n]))
    valid = math.ceil(n / 160)
    assert lengths.tolist() == [valid]
    assert specs.shape[1] == featurizer.fb.shape[1]
    assert specs.shape[2] % 16 == 0 and specs.shape[2] >= valid
    assert torch.all(specs[..., valid:] == 0)
    body = specs[0, :, :valid]
    assert torch.allclose(body.mean(1), torch.zeros(body.shape[0]), atol=1e-4)
    assert torch.allclose(body.std(1), torch.ones(body.shape[0]), atol=1e-3)
    # Peak normalisation: the input scale does not matter.
    louder, _ = featurizer(wave * 7.0, torch.tensor([n]))
    assert torch.allclose(louder, specs, atol=1e-4)


def test_window_and_filterbank_buffers_come_from_the_file(emova_dir: Path) -> None:
    tensors = load_file(str(emova_dir / WEIGHTS))
    tensors["encoder.encoder.wav2spec.featurizer.fb"] *= 2.0
    tensors["encoder.encoder.wav2spec.featurizer.window"] *= 0.5
    model = EmovaSpeechTokenizer(
        emova_module.EmovaConfig.from_dict(loading.read_config(emova_dir))
    )
    loading.load_state_dict_strict(model, tensors, skip=EMOVA_TRAINING_ONLY)
    featurizer = model.encoder.encoder.wav2spec.featurizer
    assert torch.equal(featurizer.fb, tensors["encoder.encoder.wav2spec.featurizer.fb"])
    assert torch.equal(
        featurizer.window, tensors["encoder.encoder.wav2spec.featurizer.window"]
    )


def test_audio_errors(emova: EmovaSpeechTokenizer, tmp_path: Path) -> None:
    junk = tmp_path / "noise.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(MediaError, match=r"noise.wav"):
        emova.encode(junk)
    with pytest.raises(MediaError, match=r"absent.flac"):
        load_audio(tmp_path / "absent.flac")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"empty.wav"):
        load_audio(empty)
    with pytest.raises(MediaError, match=r"too short"):
        emova.encode(np.zeros(200, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"NaN"):
        emova.encode(np.full(1000, np.nan, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"1-D"):
        emova.encode(np.zeros((2, 1000), dtype=np.float32), 16000)


def test_resampling_keeps_pitch_and_length() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = resample_audio(tone, rate, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) <= 1
    assert resample_audio(tone[:1001], rate, 16000).shape == (
        math.ceil(1001 * 16000 / 44100),
    )


# U2S


def test_decode_length_follows_predicted_durations(emova: EmovaSpeechTokenizer) -> None:
    units = torch.tensor([5, 900, 17, 4095, 0, 33, 2048, 7])
    out = emova.decode(units, generator=torch.Generator().manual_seed(3))
    assert out.sample_rate == 22050 and out.hop_length == 256
    assert out.waveform.dtype == np.float32 and np.isfinite(out.waveform).all()
    assert np.abs(out.waveform).max() <= 1.0
    assert out.durations.shape == (8,) and (out.durations >= 0).all()
    assert len(out.waveform) == 256 * max(1, int(out.durations.sum()))

    # Independently run the duration predictor with the same noise.
    gen = torch.Generator().manual_seed(3)
    decoder = emova.decoder
    with torch.no_grad():
        x, _, _, x_mask = decoder.enc_p((units + 178)[None], torch.tensor([8]))
        noise = torch.randn((1, 2, 8), generator=gen) * 0.8
        style = emova.style_embedding(
            torch.tensor([emova.style_index(DEFAULT_CONDITION)])
        )
        logw = decoder.dp(x, x_mask, noise, g=style.unsqueeze(-1))
    expected = torch.ceil(torch.exp(logw) * x_mask)[0, 0].long().numpy()
    assert np.array_equal(out.durations, expected)


def test_decode_is_seeded_and_style_conditioned(emova: EmovaSpeechTokenizer) -> None:
    units = [1, 2, 3, 4, 5, 6]
    a = emova.decode(units, generator=torch.Generator().manual_seed(0))
    b = emova.decode(units, generator=torch.Generator().manual_seed(0))
    c = emova.decode(units, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(a.waveform, b.waveform)
    assert not (
        len(a.waveform) == len(c.waveform) and np.allclose(a.waveform, c.waveform)
    )
    male = "gender-male_emotion-happy_speed-fast_pitch-high"
    d = emova.decode(units, male, generator=torch.Generator().manual_seed(0))
    assert not (
        len(a.waveform) == len(d.waveform) and np.allclose(a.waveform, d.waveform)
    )
    plain = emova.decode(units, None, generator=torch.Generator().manual_seed(0))
    assert len(plain.waveform) == 256 * max(1, int(plain.durations.sum()))


def test_decode_rejects_bad_input(emova: EmovaSpeechTokenizer) -> None:
    with pytest.raises(ValueError, match=r"unknown style condition"):
        emova.decode([1, 2], "gender-robot_emotion-neutral_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match=r"\[0, 4096\)"):
        emova.decode([4096])
    with pytest.raises(ValueError, match=r"empty"):
        emova.decode([])


def test_style_conditions_order() -> None:
    assert len(STYLE_CONDITIONS) == 126 == len(set(STYLE_CONDITIONS))
    # Upstream condition2style_centroid.txt order (lexicographic).
    assert STYLE_CONDITIONS[:4] == (
        "gender-female_emotion-angry_speed-fast_pitch-high",
        "gender-female_emotion-angry_speed-fast_pitch-low",
        "gender-female_emotion-angry_speed-fast_pitch-normal",
        "gender-female_emotion-angry_speed-normal_pitch-high",
    )
    assert STYLE_CONDITIONS.index(DEFAULT_CONDITION) == 41
    assert (
        STYLE_CONDITIONS[-1] == "gender-male_emotion-surprised_speed-slow_pitch-normal"
    )


def test_round_trip_audio_to_units_to_audio(emova: EmovaSpeechTokenizer) -> None:
    units = emova.encode(speech_like(1.0), 16000)
    out = emova.decode(units, generator=torch.Generator().manual_seed(0))
    assert out.durations.shape == (units.numel(),)
    assert len(out.waveform) == 256 * max(1, int(out.durations.sum()))


# loading


def _rewrite(src: Path, dst: Path, edit, config_edit=None) -> Path:
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(src / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(dst / WEIGHTS))
    return dst


def test_fixture_carries_training_only_tensors(emova_dir: Path) -> None:
    tensors = load_file(str(emova_dir / WEIGHTS))
    for entry in EMOVA_TRAINING_ONLY:
        assert any(loading._matches(k, (entry,)) for k in tensors), entry
    model = EmovaSpeechTokenizer(
        emova_module.EmovaConfig.from_dict(loading.read_config(emova_dir))
    )
    with pytest.raises(loading.CheckpointError, match=r"decoder.enc_q.pre.weight"):
        loading.load_state_dict_strict(model, tensors)  # without the skip list


def test_strict_loading_errors(emova_dir: Path, tmp_path: Path) -> None:
    key = "decoder.flow.flows.2.enc.in_layers.0.weight_v"
    missing = _rewrite(emova_dir, tmp_path / "m", lambda t: t.pop(key))
    with pytest.raises(loading.CheckpointError, match=rf"missing tensors: {key}"):
        load_emova(missing)

    def add(t: dict) -> None:
        t["decoder.dec.extra"] = torch.zeros(1)

    with pytest.raises(
        loading.CheckpointError, match=r"unexpected tensors: decoder.dec.extra"
    ):
        load_emova(_rewrite(emova_dir, tmp_path / "u", add))

    def reshape(t: dict) -> None:
        t["style_embedding.weight"] = torch.zeros(125, 16)

    with pytest.raises(loading.CheckpointError, match=r"style_embedding.weight"):
        load_emova(_rewrite(emova_dir, tmp_path / "s", reshape))

    def bad_type(c: dict) -> None:
        c["s2u_unit_type"] = "20ms_other"

    with pytest.raises(loading.CheckpointError, match=r"s2u_unit_type"):
        load_emova(_rewrite(emova_dir, tmp_path / "c", lambda t: None, bad_type))


def test_new_style_weight_norm_names_and_optional_buffers(
    emova_dir: Path, tmp_path: Path
) -> None:
    def rename(t: dict) -> None:
        for key in [k for k in t if k.endswith((".weight_g", ".weight_v"))]:
            suffix = "original0" if key.endswith("_g") else "original1"
            t[key.rsplit(".", 1)[0] + f".parametrizations.weight.{suffix}"] = t.pop(key)
        for key in EMOVA_OPTIONAL_BUFFERS:
            t.pop(key)

    model = load_emova(_rewrite(emova_dir, tmp_path / "new", rename))
    reference = load_emova(emova_dir)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_style_table_from_config(emova_dir: Path, tmp_path: Path) -> None:
    def permute(c: dict) -> None:
        c["u2s_style2idx"] = {k: 125 - v for k, v in c["u2s_style2idx"].items()}

    model = load_emova(_rewrite(emova_dir, tmp_path / "p", lambda t: None, permute))
    assert model.style_index(DEFAULT_CONDITION) == 125 - 41


def test_env_var_resolution(emova_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loading.EMOVA_PATH_ENV, str(emova_dir))
    model = load_emova()
    assert model.output_sample_rate == 22050 and model.input_sample_rate == 16000
    assert model.codebook_size == 4096


def test_a_batch_decodes_each_utterance_as_alone(emova: EmovaSpeechTokenizer) -> None:
    """Requests batch in the server without changing their seeded audio: each
    utterance draws its own noise for its own length, with its own speed and
    style."""
    from dynin_vllm.multimodal.emova import SpeechItem

    rng = torch.Generator().manual_seed(0)
    specs = [
        (12, "gender-female_emotion-neutral_speed-normal_pitch-normal", 1, 1.0),
        (30, "gender-male_emotion-happy_speed-fast_pitch-low", 2, 0.5),
        (5, "gender-female_emotion-sad_speed-slow_pitch-high", 3, 2.0),
    ]
    items = [
        (torch.randint(0, emova.codebook_size, (n,), generator=rng), cond, seed, scale)
        for n, cond, seed, scale in specs
    ]
    batch = emova.decode_batch(
        [
            SpeechItem(u, c, torch.Generator().manual_seed(s), scale)
            for u, c, s, scale in items
        ]
    )
    for (units, cond, seed, scale), got in zip(items, batch, strict=True):
        alone = emova.decode(
            units,
            cond,
            generator=torch.Generator().manual_seed(seed),
            length_scale=scale,
        )
        assert got.waveform.shape == alone.waveform.shape
        np.testing.assert_allclose(got.waveform, alone.waveform, atol=1e-4)
        np.testing.assert_array_equal(got.durations, alone.durations)
    # Another seed changes the audio: the noise is really per utterance.
    other = emova.decode(
        items[0][0], items[0][1], generator=torch.Generator().manual_seed(9)
    )
    assert not np.allclose(other.waveform[:100], batch[0].waveform[:100])
