"""Image understanding in the engine equals the reference pipeline.

The reference (``dynin_vllm.reference.media_prompts``) encodes the image with
MAGVIT-v2 and builds upstream's layout itself; the engine gets the image the
vLLM way (``LLM.chat`` content parts, ``multi_modal_data``), encodes it inside
the engine and must answer token for token the same, at temperature 0, in
``exact`` and ``prefix``, alone and batched with text and with each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynin_vllm.reference.media_prompts import image_understanding_prompt
from dynin_vllm.reference.sampler import generate as reference_generate

pytestmark = pytest.mark.engine

BOS, MMU, SOI, EOI, V2T = 126080, 126089, 126084, 126085, 126100
PLACEHOLDER = 126110
SMALL = 64  # 16 codes: most cases use it to stay fast on CPU


def _image(seed: int, size=(90, 120), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return image.convert(mode)


#: name: (image, question, config, resolution)
CASES = {
    "rgb-exact": (_image(0), "What is in the picture?", {"mode": "exact"}, SMALL),
    "rgb-prefix": (_image(1), "Describe it.", {"mode": "prefix"}, SMALL),
    "rgba-prefix": (_image(2, mode="RGBA"), "Colors?", {"mode": "prefix"}, SMALL),
    "gray-exact": (_image(3, (40, 200), "L"), "Shape?", {"mode": "exact"}, SMALL),
    "palette-threshold": (
        _image(4, mode="P"),
        "Count.",
        {"mode": "prefix", "threshold": 0.3},
        SMALL,
    ),
    "default-resolution": (_image(5, (400, 360)), "Where?", {"mode": "prefix"}, None),
}
ANSWER, BLOCK = 8, 4


def _config(config: dict) -> dict:
    steps = {} if "threshold" in config else {"steps": ANSWER}
    return {"block_length": BLOCK, **steps, **config}


def _sampling_params(config: dict):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=ANSWER, temperature=0, ignore_eos=True, extra_args=_config(config)
    )


def _mm_kwargs(resolution):
    return None if resolution is None else {"image_resolution": resolution}


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


@pytest.fixture(scope="module")
def magvit(dynin_checkpoint):
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2

    return load_magvit2(dynin_checkpoint / "magvitv2")


@pytest.fixture(scope="module")
def expected(tokenizer, magvit, reference_model):
    out = {}
    for name, (image, question, config, resolution) in CASES.items():
        prompt = image_understanding_prompt(
            tokenizer, magvit, image, question, resolution=resolution or 336
        )
        answer = reference_generate(
            reference_model, prompt, gen_length=ANSWER, **_config(config)
        ).answer
        out[name] = (prompt, answer)
    return out


def _check_prompt(got: list[int], want: list[int]) -> None:
    """The engine's prompt is the reference's with placeholders for the codes."""
    assert len(got) == len(want)
    codes = [i for i, t in enumerate(got) if t == PLACEHOLDER]
    assert got[:2] == want[:2] and want[:2] in ([MMU, SOI], [V2T, SOI])
    assert got[len(codes) + 2 : len(codes) + 4] == [EOI, BOS]
    assert codes == list(range(2, 2 + len(codes)))
    assert [t for i, t in enumerate(got) if i not in codes] == [
        t for i, t in enumerate(want) if i not in codes
    ]


def test_images_change_the_reference_answer(expected):
    """The cases discriminate: different images give different answers."""
    answers = {tuple(answer) for _, answer in expected.values()}
    assert len(answers) >= 3


def test_chat_with_an_image_matches_the_reference_alone(dynin_llm, expected):
    for name, (image, question, config, resolution) in CASES.items():
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "image_pil", "image_pil": image},
                    {"type": "text", "text": question},
                ],
            }
        ]
        (out,) = dynin_llm.chat(
            [conversation],
            _sampling_params(config),
            use_tqdm=False,
            mm_processor_kwargs=_mm_kwargs(resolution),
        )
        prompt, answer = expected[name]
        _check_prompt(list(out.prompt_token_ids), prompt)
        assert list(out.outputs[0].token_ids) == answer, name


def test_generate_batches_images_with_each_other_and_with_text(
    dynin_llm, expected, tokenizer, reference_model
):
    from dynin_vllm.reference.prompts import chat_turn

    requests, params = [], []
    for image, question, config, resolution in CASES.values():
        request = {
            "prompt": chat_turn(question),
            "multi_modal_data": {"image": image},
        }
        if resolution is not None:
            request["mm_processor_kwargs"] = _mm_kwargs(resolution)
        requests.append(request)
        params.append(_sampling_params(config))
    text_prompt = [BOS, *range(300, 312)]
    requests.append({"prompt_token_ids": text_prompt})
    params.append(_sampling_params({"mode": "prefix"}))
    outputs = dynin_llm.generate(requests, params, use_tqdm=False)
    for name, out in zip(CASES, outputs, strict=False):
        prompt, answer = expected[name]
        _check_prompt(list(out.prompt_token_ids), prompt)
        assert list(out.outputs[0].token_ids) == answer, name
    text = reference_generate(
        reference_model, text_prompt, gen_length=ANSWER, **_config({"mode": "prefix"})
    ).answer
    assert list(outputs[-1].outputs[0].token_ids) == text


@pytest.mark.parametrize(
    ("request_update", "message"),
    [
        ({"mm_processor_kwargs": {"image_resolution": 50}}, "image_resolution"),
        ({"mm_processor_kwargs": {"image_resolution": 1024}}, "image_resolution"),
        ({"multi_modal_data": {"image": [_image(0), _image(1)]}}, "At most 1 image"),
    ],
)
def test_bad_image_requests_are_refused_and_the_engine_goes_on(
    dynin_llm, request_update, message
):
    request = {"prompt": "Hi", "multi_modal_data": {"image": _image(0)}}
    request.update(request_update)
    with pytest.raises(Exception, match=message):
        dynin_llm.generate([request], _sampling_params({}), use_tqdm=False)
    (out,) = dynin_llm.generate(
        [
            {
                "prompt": "Hi",
                "multi_modal_data": {"image": _image(0)},
                "mm_processor_kwargs": {"image_resolution": SMALL},
            }
        ],
        _sampling_params({}),
        use_tqdm=False,
    )
    assert len(out.outputs[0].token_ids) == ANSWER


def test_image_requests_use_upstreams_image_defaults(
    dynin_llm, tokenizer, magvit, reference_model
):
    """Without block_length and steps an image request runs as upstream's
    image demo: one block over the answer, two tokens per step."""
    from vllm import SamplingParams

    from dynin_vllm.reference.prompts import chat_turn

    image, question = _image(9), "Anything?"
    (out,) = dynin_llm.generate(
        [
            {
                "prompt": chat_turn(question),
                "multi_modal_data": {"image": image},
                "mm_processor_kwargs": {"image_resolution": SMALL},
            }
        ],
        SamplingParams(max_tokens=ANSWER, temperature=0, ignore_eos=True),
        use_tqdm=False,
    )
    params = dict(dynin_llm.collective_rpc("recent_request_params")[0][-1][1])
    assert (params["task"], params["block_length"], params["steps"]) == (
        "image",
        ANSWER,
        ANSWER // 2,
    )
    prompt = image_understanding_prompt(
        tokenizer, magvit, image, question, resolution=SMALL
    )
    want = reference_generate(
        reference_model,
        prompt,
        gen_length=ANSWER,
        block_length=ANSWER,
        steps=ANSWER // 2,
        mode="dual",
    ).answer
    assert list(out.outputs[0].token_ids) == want


def test_without_codec_weights_text_works_and_media_say_what_to_download(tmp_path):
    """A Dynin checkpoint whose MAGVIT-v2 and EMOVA weights cannot be found
    serves text; an image or audio request is refused with what to download."""
    import shutil

    from dynin_vllm.testing.make_checkpoint import make_checkpoint
    from dynin_vllm.testing.media_samples import speech_like
    from tests.engine_utils import make_llm, shutdown, temporary_env

    checkpoint = make_checkpoint(tmp_path / "no-codec", "dynin")
    shutil.rmtree(checkpoint / "magvitv2")
    shutil.rmtree(checkpoint / "emova_speech_tokenizer")
    with temporary_env(HF_HUB_OFFLINE="1", DYNIN_MAGVIT_PATH="", DYNIN_EMOVA_PATH=""):
        llm = make_llm(checkpoint)
        try:
            (text,) = llm.generate(
                [{"prompt_token_ids": [BOS, 5, 6, 7]}],
                _sampling_params({}),
                use_tqdm=False,
            )
            assert len(text.outputs[0].token_ids) == ANSWER
            with pytest.raises(Exception, match="snu-aidas/magvitv2") as err:
                llm.generate(
                    [{"prompt": "Hi", "multi_modal_data": {"image": _image(0)}}],
                    _sampling_params({}),
                    use_tqdm=False,
                )
            assert "DYNIN_MAGVIT_PATH" in str(err.value)
            audio = (speech_like(0), 16000)
            with pytest.raises(Exception, match="emova_speech_tokenizer_hf") as err:
                llm.generate(
                    [{"prompt": "Hi", "multi_modal_data": {"audio": audio}}],
                    _sampling_params({}),
                    use_tqdm=False,
                )
            assert "DYNIN_EMOVA_PATH" in str(err.value)
        finally:
            shutdown(llm)


# --------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------
FRAME = 32  # 4 codes per frame; 5 frames: 20 codes


def _video(seed: int, frames: int = 12, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8)


def _mp4(path, frames: np.ndarray) -> str:
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (width, height)
    )
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def test_videos_match_the_reference_batched_with_images_and_text(
    dynin_llm, tokenizer, magvit, reference_model
):
    from dynin_vllm.reference.media_prompts import video_understanding_prompt
    from dynin_vllm.reference.prompts import chat_turn

    cases = [
        (_video(0), "What happens?", {"mode": "exact"}),
        (_video(1, frames=30), "Describe the clip.", {"mode": "prefix"}),
    ]
    requests = [
        {
            "prompt": chat_turn(question),
            "multi_modal_data": {"video": frames},
            "mm_processor_kwargs": {"video_resolution": FRAME},
        }
        for frames, question, _ in cases
    ]
    image, question, config, resolution = CASES["rgb-prefix"]
    requests.append(
        {
            "prompt": chat_turn(question),
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": _mm_kwargs(resolution),
        }
    )
    requests.append({"prompt_token_ids": [BOS, *range(300, 312)]})
    params = [_sampling_params(c) for *_, c in cases]
    params += [_sampling_params(config), _sampling_params({"mode": "prefix"})]
    outputs = dynin_llm.generate(requests, params, use_tqdm=False)
    for (frames, question, config), out in zip(cases, outputs, strict=False):
        prompt = video_understanding_prompt(
            tokenizer, magvit, frames, question, resolution=FRAME
        )
        _check_prompt(list(out.prompt_token_ids), prompt)
        want = reference_generate(
            reference_model, prompt, gen_length=ANSWER, **_config(config)
        ).answer
        assert list(out.outputs[0].token_ids) == want
    assert list(outputs[2].outputs[0].token_ids) == _image_answer(
        tokenizer, magvit, reference_model, "rgb-prefix"
    )


def _image_answer(tokenizer, magvit, reference_model, name):
    image, question, config, resolution = CASES[name]
    prompt = image_understanding_prompt(
        tokenizer, magvit, image, question, resolution=resolution or 336
    )
    return reference_generate(
        reference_model, prompt, gen_length=ANSWER, **_config(config)
    ).answer


def test_a_video_file_in_chat_matches_the_reference(
    dynin_llm, tokenizer, magvit, reference_model, tmp_path
):
    """A video URL decodes to upstream's frames (cv2, uniform sampling)."""
    import base64

    from dynin_vllm.reference.media_prompts import video_understanding_prompt

    path = _mp4(tmp_path / "clip.mp4", _video(5, frames=17))
    data = Path(path).read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    question = "What is moving?"
    (out,) = dynin_llm.chat(
        [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": url}},
                        {"type": "text", "text": question},
                    ],
                }
            ]
        ],
        _sampling_params({"mode": "prefix"}),
        use_tqdm=False,
        mm_processor_kwargs={"video_resolution": FRAME},
    )
    prompt = video_understanding_prompt(
        tokenizer, magvit, path, question, resolution=FRAME
    )
    want = reference_generate(
        reference_model, prompt, gen_length=ANSWER, **_config({"mode": "prefix"})
    ).answer
    _check_prompt(list(out.prompt_token_ids), prompt)
    assert list(out.outputs[0].token_ids) == want


def test_an_image_and_a_video_together_are_refused(dynin_llm):
    with pytest.raises(Exception, match="one media item per prompt"):
        dynin_llm.generate(
            [
                {
                    "prompt": "Hi",
                    "multi_modal_data": {"image": _image(0), "video": _video(0)},
                    "mm_processor_kwargs": {
                        "image_resolution": SMALL,
                        "video_resolution": FRAME,
                    },
                }
            ],
            _sampling_params({}),
            use_tqdm=False,
        )


def test_staggered_media_arrivals_match_the_reference(
    dynin_llm, expected, tokenizer, magvit, reference_model, dynin_checkpoint
):
    """Images, a video, audio and text joining while others denoise."""
    from dynin_vllm.multimodal.emova import load_emova
    from dynin_vllm.reference.media_prompts import (
        speech_recognition_prompt,
        video_understanding_prompt,
    )
    from dynin_vllm.reference.prompts import chat_turn
    from dynin_vllm.testing.media_samples import speech_like

    engine = dynin_llm.llm_engine
    video = _video(8)
    arrivals = []
    for name in ("rgb-exact", "rgb-prefix", "gray-exact"):
        image, question, config, resolution = CASES[name]
        arrivals.append(
            (
                name,
                {
                    "prompt": chat_turn(question),
                    "multi_modal_data": {"image": image},
                    "mm_processor_kwargs": _mm_kwargs(resolution),
                },
                config,
                expected[name][1],
            )
        )
    video_prompt = video_understanding_prompt(
        tokenizer, magvit, video, "Go on.", resolution=FRAME
    )
    arrivals.insert(
        1,
        (
            "video",
            {
                "prompt": chat_turn("Go on."),
                "multi_modal_data": {"video": video},
                "mm_processor_kwargs": {"video_resolution": FRAME},
            },
            {"mode": "exact"},
            reference_generate(
                reference_model,
                video_prompt,
                gen_length=ANSWER,
                **_config({"mode": "exact"}),
            ).answer,
        ),
    )
    clip = speech_like(2)
    speech_prompt = speech_recognition_prompt(
        tokenizer,
        load_emova(dynin_checkpoint / "emova_speech_tokenizer"),
        clip,
        "Transcribe the given audio.",
        sample_rate=16000,
    )
    arrivals.insert(
        3,
        (
            "audio",
            {
                "prompt": chat_turn("Transcribe the given audio."),
                "multi_modal_data": {"audio": (clip, 16000)},
            },
            {"mode": "prefix"},
            reference_generate(
                reference_model,
                speech_prompt,
                gen_length=ANSWER,
                **_config({"mode": "prefix"}),
            ).answer,
        ),
    )
    text_prompt = [BOS, *range(400, 410)]
    arrivals.append(
        (
            "text",
            {"prompt_token_ids": text_prompt},
            {"mode": "prefix"},
            reference_generate(
                reference_model,
                text_prompt,
                gen_length=ANSWER,
                **_config({"mode": "prefix"}),
            ).answer,
        )
    )
    pending, outputs, steps = list(arrivals), {}, 0
    while pending or engine.has_unfinished_requests():
        if pending and steps % 2 == 0:
            name, request, config, _ = pending.pop(0)
            engine.add_request(f"staggered-{name}", request, _sampling_params(config))
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
    assert outputs == {f"staggered-{name}": want for name, _, _, want in arrivals}
