"""Speech recognition in the engine equals the reference pipeline.

The reference (``dynin_vllm.reference.media_prompts.speech_recognition_prompt``)
encodes the audio with the full EMOVA speech tokenizer and builds upstream's
``<|s2t|>`` layout itself; the engine gets the audio the vLLM way
(``LLM.chat`` content parts, ``multi_modal_data``) and must answer token for
token the same at temperature 0, in ``exact`` and ``prefix``, alone and
batched with text, images and other audio.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dynin_vllm.reference.media_prompts import speech_recognition_prompt
from dynin_vllm.reference.prompts import chat_turn
from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.testing.media_samples import audio_bytes, speech_like

pytestmark = pytest.mark.engine

S2T, SOA, EOA, BOS = 126096, 126097, 126098, 126080
PLACEHOLDER = 126110
RATE = 16000
ANSWER, BLOCK = 8, 4
INSTRUCTION = "Transcribe the given audio."


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    return audio_bytes(samples, rate)


#: name: (seed, instruction, config)
CASES = {
    "exact": (2, INSTRUCTION, {"mode": "exact"}),
    "prefix": (1, INSTRUCTION, {"mode": "prefix"}),
    "other-instruction": (8, "Write down what you hear in the audio.", {}),
    "threshold": (4, INSTRUCTION, {"mode": "prefix", "threshold": 0.3}),
}


def _config(config: dict) -> dict:
    steps = {} if "threshold" in config else {"steps": ANSWER}
    return {"block_length": BLOCK, "mode": "prefix", **steps, **config}


def _sampling_params(config: dict, max_tokens: int = ANSWER):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0,
        ignore_eos=True,
        extra_args=_config(config),
    )


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


@pytest.fixture(scope="module")
def emova(dynin_checkpoint):
    from dynin_vllm.multimodal.emova import load_emova

    return load_emova(dynin_checkpoint / "emova_speech_tokenizer")


@pytest.fixture(scope="module")
def expected(tokenizer, emova, reference_model):
    out = {}
    for name, (seed, instruction, config) in CASES.items():
        prompt = speech_recognition_prompt(
            tokenizer, emova, speech_like(seed), instruction, sample_rate=RATE
        )
        answer = reference_generate(
            reference_model, prompt, gen_length=ANSWER, **_config(config)
        ).answer
        out[name] = (prompt, answer)
    return out


def check_speech_prompt(got: list[int], want: list[int]) -> None:
    """The engine's prompt is the reference's with placeholders for the units."""
    assert len(got) == len(want)
    units = [i for i, t in enumerate(got) if t == PLACEHOLDER]
    assert got[:2] == want[:2] == [S2T, SOA]
    assert units == list(range(2, 2 + len(units))) and units
    assert got[len(units) + 2] == want[len(units) + 2] == EOA
    assert BOS not in got
    assert got[len(units) + 3 :] == want[len(units) + 3 :]


def test_audio_changes_the_reference_answer(expected):
    """The cases discriminate: different audio gives different answers."""
    assert len({tuple(answer) for _, answer in expected.values()}) >= 3


def test_chat_with_audio_matches_the_reference_alone(dynin_llm, expected):
    for name, (seed, instruction, config) in CASES.items():
        data = base64.b64encode(wav_bytes(speech_like(seed))).decode()
        conversation = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": data, "format": "wav"},
                    },
                    {"type": "text", "text": instruction},
                ],
            }
        ]
        (out,) = dynin_llm.chat(
            [conversation], _sampling_params(config), use_tqdm=False
        )
        prompt, answer = expected[name]
        check_speech_prompt(list(out.prompt_token_ids), prompt)
        assert list(out.outputs[0].token_ids) == answer, name


def test_generate_batches_audio_with_images_and_text(
    dynin_llm, expected, reference_model, tokenizer, dynin_checkpoint
):
    from PIL import Image

    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.reference.media_prompts import image_understanding_prompt

    requests, params = [], []
    for seed, instruction, config in CASES.values():
        requests.append(
            {
                "prompt": chat_turn(instruction),
                "multi_modal_data": {"audio": (speech_like(seed), RATE)},
            }
        )
        params.append(_sampling_params(config))
    image = Image.fromarray(
        np.random.default_rng(9).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    )
    requests.append(
        {
            "prompt": chat_turn("What is it?"),
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": {"image_resolution": 64},
        }
    )
    params.append(_sampling_params({"mode": "exact"}))
    text_prompt = [BOS, *range(500, 510)]
    requests.append({"prompt_token_ids": text_prompt})
    params.append(_sampling_params({"mode": "prefix"}))
    outputs = dynin_llm.generate(requests, params, use_tqdm=False)
    for name, out in zip(CASES, outputs, strict=False):
        prompt, answer = expected[name]
        check_speech_prompt(list(out.prompt_token_ids), prompt)
        assert list(out.outputs[0].token_ids) == answer, name
    pictured = image_understanding_prompt(
        tokenizer,
        load_magvit2(dynin_checkpoint / "magvitv2"),
        image,
        "What is it?",
        resolution=64,
    )
    for prompt, config, out in (
        (pictured, {"mode": "exact"}, outputs[-2]),
        (text_prompt, {"mode": "prefix"}, outputs[-1]),
    ):
        want = reference_generate(
            reference_model, prompt, gen_length=ANSWER, **_config(config)
        ).answer
        assert list(out.outputs[0].token_ids) == want


def test_a_resampled_stereo_clip_is_transcribed_as_its_16k_mono_mix(
    dynin_llm, tokenizer, emova, reference_model
):
    """Audio at 44.1 kHz in two channels reaches S2U as vLLM's PyAV-resampled
    mono mix, the waveform the transcription endpoint would encode."""
    from vllm.multimodal.audio import resample_audio_pyav

    clip = speech_like(4, rate=44100)
    stereo = np.stack([clip, 0.25 * clip], axis=1)
    data = base64.b64encode(wav_bytes(stereo, 44100)).decode()
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                {"type": "text", "text": INSTRUCTION},
            ],
        }
    ]
    (out,) = dynin_llm.chat([conversation], _sampling_params({}), use_tqdm=False)
    mono = resample_audio_pyav(
        stereo.mean(axis=1).astype(np.float32), orig_sr=44100, target_sr=RATE
    )
    prompt = speech_recognition_prompt(
        tokenizer, emova, mono, INSTRUCTION, sample_rate=RATE
    )
    check_speech_prompt(list(out.prompt_token_ids), prompt)
    want = reference_generate(
        reference_model, prompt, gen_length=ANSWER, **_config({})
    ).answer
    assert list(out.outputs[0].token_ids) == want


def test_speech_requests_use_upstreams_asr_schedule(
    dynin_llm, tokenizer, emova, reference_model
):
    """Without block_length and steps a speech request runs upstream's ASR
    schedule (blocks of 2, four steps each committing [1, 1, 0, 0]); the
    steps that commit nothing are skipped. Without max_tokens it gets 128
    answer slots."""
    from vllm import SamplingParams

    clip = speech_like(5)
    prompt = speech_recognition_prompt(
        tokenizer, emova, clip, INSTRUCTION, sample_rate=RATE
    )
    request = {
        "prompt": chat_turn(INSTRUCTION),
        "multi_modal_data": {"audio": (clip, RATE)},
    }
    exact = {"mode": "exact"}
    short, unbounded = dynin_llm.generate(
        [request, request],
        [
            SamplingParams(
                max_tokens=12, temperature=0, ignore_eos=True, extra_args=exact
            ),
            SamplingParams(max_tokens=None, temperature=0, ignore_eos=True),
        ],
        use_tqdm=False,
    )
    upstream = reference_generate(
        reference_model, prompt, gen_length=12, block_length=2, steps=24, **exact
    )
    assert list(short.outputs[0].token_ids) == upstream.answer
    steps = short.outputs[0].spec_decode_metrics.to_dict()["num_spec_steps"]
    assert steps == 12  # 24 scheduled, 12 of them commit nothing
    assert len(unbounded.outputs[0].token_ids) == 128


def test_s2u_runs_once_per_audio_item_and_forwards_the_reference_layout(
    dynin_llm, tokenizer, emova, monkeypatch
):
    """S2U runs in the front end's processor, once per item, however many
    steps and re-forwards (``exact``) the request takes; the ids the engine
    forwards (its prompt, placeholders replaced by the ids that travel with
    the request) are the independently built reference layout."""
    from dynin_vllm.multimodal.speech_units import SpeechUnitEncoder

    encoded = []
    original = SpeechUnitEncoder.units

    def counting(self, waveform, **kwargs):
        units = original(self, waveform, **kwargs)
        encoded.append((np.asarray(waveform).copy(), units))
        return units

    monkeypatch.setattr(SpeechUnitEncoder, "units", counting)
    clips = [speech_like(20 + i, seconds=0.5) for i in range(3)]
    outputs = dynin_llm.generate(
        [
            {"prompt": chat_turn(INSTRUCTION), "multi_modal_data": {"audio": (c, RATE)}}
            for c in clips
        ],
        _sampling_params({"mode": "exact", "steps": 16}, max_tokens=16),
        use_tqdm=False,
    )
    steps = [
        o.outputs[0].spec_decode_metrics.to_dict()["num_spec_steps"] for o in outputs
    ]
    assert steps == [16, 16, 16]
    assert len(encoded) == len(clips)
    offset = len(tokenizer) + 8192
    for clip, out in zip(clips, outputs, strict=True):
        (units,) = [u for w, u in encoded if np.array_equal(w, clip)]
        ids = iter(offset + u for u in units)
        forwarded = [next(ids) if t == PLACEHOLDER else t for t in out.prompt_token_ids]
        assert next(ids, None) is None
        assert forwarded == speech_recognition_prompt(
            tokenizer, emova, clip, INSTRUCTION, sample_rate=RATE
        )


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0, np.float32), "audio"),
        (np.full(100, 0.1, np.float32), "too short"),
        (speech_like(0, seconds=21.0), "20.48 s limit"),
        (np.full(800, np.nan, np.float32), "NaN"),
    ],
    ids=["empty", "too-short", "too-long", "not-finite"],
)
def test_bad_audio_is_refused_naming_it_and_the_engine_goes_on(
    dynin_llm, expected, audio, message
):
    with pytest.raises(Exception, match=message):
        dynin_llm.generate(
            [{"prompt": "Hi", "multi_modal_data": {"audio": (audio, RATE)}}],
            _sampling_params({}),
            use_tqdm=False,
        )
    seed, instruction, config = CASES["exact"]
    (out,) = dynin_llm.generate(
        [
            {
                "prompt": chat_turn(instruction),
                "multi_modal_data": {"audio": (speech_like(seed), RATE)},
            }
        ],
        _sampling_params(config),
        use_tqdm=False,
    )
    assert list(out.outputs[0].token_ids) == expected["exact"][1]


def test_audio_with_other_media_is_refused(dynin_llm):
    from PIL import Image

    image = Image.new("RGB", (64, 64), "red")
    with pytest.raises(Exception, match="one media item per prompt"):
        dynin_llm.generate(
            [
                {
                    "prompt": "Hi",
                    "multi_modal_data": {
                        "audio": (speech_like(0), RATE),
                        "image": image,
                    },
                    "mm_processor_kwargs": {"image_resolution": 64},
                }
            ],
            _sampling_params({}),
            use_tqdm=False,
        )
    with pytest.raises(Exception, match="At most 1 audio"):
        dynin_llm.generate(
            [
                {
                    "prompt": "Hi",
                    "multi_modal_data": {
                        "audio": [(speech_like(0), RATE), (speech_like(1), RATE)]
                    },
                }
            ],
            _sampling_params({}),
            use_tqdm=False,
        )
