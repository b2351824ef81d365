"""``vllm serve <tiny checkpoint>`` over real HTTP on loopback.

The server is started as a user would: the shared CPU engine settings
(``dynin_vllm.testing.engine_args``) as CLI flags, and one server-wide media
setting (``--mm-processor-kwargs``, small video frames for the short test
context); nothing else model-specific.
Answers are checked against the reference sampler, decoded with the
checkpoint's tokenizer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from dynin_vllm.reference.sampler import generate as reference_generate
from dynin_vllm.reference.sampler import truncate_at_eos
from dynin_vllm.serving.launch import served
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args

pytestmark = pytest.mark.server

EOS = 126081


@pytest.fixture(scope="module")
def server(dynin_checkpoint: Path, tmp_path_factory):
    """``vllm serve`` with the shared CPU engine settings and no model flags."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    # A server-wide media setting (--mm-processor-kwargs): video frames at
    # 64 px (16 codes each), so a video prompt fits the 512-token context.
    args = {**ENGINE_ARGS, "mm_processor_kwargs": {"video_resolution": 64}}
    with served(dynin_checkpoint, extra_args=cli_args(args), log_path=log) as running:
        yield running.base_url, running.model


@pytest.fixture(scope="module")
def tokenizer(dynin_checkpoint):
    from transformers import AutoTokenizer

    import dynin_vllm

    dynin_vllm.register()
    return AutoTokenizer.from_pretrained(str(dynin_checkpoint))


def _expected_text(tokenizer, reference_model, prompt_ids, **kwargs) -> str:
    answer = reference_generate(reference_model, prompt_ids, **kwargs).answer
    return tokenizer.decode(truncate_at_eos(answer, {EOS}), skip_special_tokens=True)


def _sse(response: requests.Response) -> list[dict]:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


COMPLETION = {
    "prompt": "The capital of France is",
    "max_tokens": 12,
    "temperature": 0,
    "vllm_xargs": {"block_length": 4, "steps": 12},
}


def test_completion_matches_reference(server, tokenizer, reference_model):
    base, model = server
    response = requests.post(
        f"{base}/v1/completions", json={"model": model, **COMPLETION}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    prompt_ids = tokenizer(COMPLETION["prompt"]).input_ids
    expected = _expected_text(
        tokenizer,
        reference_model,
        prompt_ids,
        gen_length=12,
        block_length=4,
        steps=12,
        mode="dual",
    )
    choice = body["choices"][0]
    assert choice["text"] == expected
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert choice["finish_reason"] in ("length", "stop")
    steps = body["metrics"]["speculative_decoding"]["num_spec_steps"]
    assert steps == 12  # one token per step


def test_dual_mode_matches_its_reference_through_the_sdk(
    server, tokenizer, reference_model
):
    """Fast-dLLM's dual cache over HTTP: fixed steps (streamed) and threshold
    decoding, concurrently, each token for token its reference's."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    base, model = server
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    cases = [
        ("The capital of France is", {"steps": 6}, True),
        ("Rivers run to the", {"threshold": 0.3}, False),
    ]

    def complete(case) -> str:
        prompt, extra, stream = case
        body = {"vllm_xargs": {"mode": "dual", "block_length": 4, **extra}}
        response = client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            stream=stream,
            extra_body=body,
        )
        if stream:
            return "".join(c.choices[0].text for c in response if c.choices)
        return response.choices[0].text

    with ThreadPoolExecutor(len(cases)) as pool:
        texts = list(pool.map(complete, cases))
    for (prompt, extra, _), text in zip(cases, texts, strict=True):
        assert text == _expected_text(
            tokenizer,
            reference_model,
            tokenizer(prompt).input_ids,
            gen_length=12,
            block_length=4,
            steps=extra.get("steps"),
            threshold=extra.get("threshold"),
            mode="dual",
        )


def test_completion_streams_one_chunk_per_committed_block(server):
    base, model = server
    plain = requests.post(
        f"{base}/v1/completions", json={"model": model, **COMPLETION}, timeout=120
    ).json()
    with requests.post(
        f"{base}/v1/completions",
        json={"model": model, **COMPLETION, "stream": True},
        stream=True,
        timeout=120,
    ) as response:
        assert response.status_code == 200
        events = _sse(response)
    texts = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert "".join(texts) == plain["choices"][0]["text"]
    num_tokens = plain["usage"]["completion_tokens"]
    num_blocks = -(-num_tokens // 4)
    assert len([t for t in texts if t]) == num_blocks


def test_chat_completion_matches_reference(server, tokenizer, reference_model):
    base, model = server
    messages = [{"role": "user", "content": "Name a color."}]
    request = {
        "model": model,
        "messages": messages,
        "max_tokens": 16,
        "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": True},
        "vllm_xargs": {"block_length": 8, "threshold": 0.3, "mode": "exact"},
    }
    # vLLM renders the template to text, then tokenizes it without adding
    # special tokens (the template writes BOS itself).
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=True
    )
    assert text.startswith("<|startoftext|><|start_header_id|>user")
    assert text.endswith(
        "Name a color.\n/think<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    )
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    expected = _expected_text(
        tokenizer,
        reference_model,
        prompt_ids,
        gen_length=16,
        block_length=8,
        threshold=0.3,
        mode="exact",
    )
    body = requests.post(f"{base}/v1/chat/completions", json=request, timeout=120)
    assert body.status_code == 200, body.text
    assert body.json()["choices"][0]["message"]["content"] == expected

    with requests.post(
        f"{base}/v1/chat/completions",
        json={**request, "stream": True},
        stream=True,
        timeout=120,
    ) as response:
        events = _sse(response)
    streamed = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
    )
    assert streamed == expected


def test_bad_parameter_gets_400_naming_it_and_server_keeps_serving(server):
    base, model = server
    bad = {**COMPLETION, "vllm_xargs": {"block_length": 4, "remasking": "entropy"}}
    response = requests.post(
        f"{base}/v1/completions", json={"model": model, **bad}, timeout=60
    )
    assert response.status_code == 400
    assert "remasking" in response.text
    unknown = {**COMPLETION, "vllm_xargs": {"block_size": 4}}
    response = requests.post(
        f"{base}/v1/completions", json={"model": model, **unknown}, timeout=60
    )
    assert response.status_code == 400
    assert "block_size" in response.text
    ok = requests.post(
        f"{base}/v1/completions", json={"model": model, **COMPLETION}, timeout=120
    )
    assert ok.status_code == 200


MASK = 126336


def _infill_reference(reference_model, prompt_ids, block_length, **kwargs):
    """The reference answer (to its EOS) and the prompt as that block left it."""
    ref = reference_generate(
        reference_model, prompt_ids, block_length=block_length, **kwargs
    )
    answer = truncate_at_eos(ref.answer, {EOS})
    return answer, ref.prompt_after_block[(len(answer) - 1) // block_length]


def test_chat_with_mask_tokens_fills_them(server, tokenizer, reference_model):
    """``<|mdm_mask|>`` in a chat message is filled (``infill``, on by default);
    the filled prompt comes back in ``prompt_token_ids``. ``infill: false``
    keeps the mask ids as fixed tokens."""
    base, model = server
    messages = [{"role": "user", "content": "Paris is the capital of<|mdm_mask|>."}]
    xargs = {"block_length": 4, "steps": 8, "mode": "exact"}
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    assert prompt_ids.count(MASK) == 1
    for infill in (True, False):
        answer, prompt = _infill_reference(
            reference_model,
            prompt_ids,
            4,
            gen_length=8,
            steps=8,
            mode="exact",
            infill=infill,
        )
        response = requests.post(
            f"{base}/v1/chat/completions",
            json={
                "model": model,
                "messages": messages,
                "max_tokens": 8,
                "temperature": 0,
                "return_token_ids": True,
                "vllm_xargs": {**xargs, "infill": infill},
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["prompt_token_ids"] == prompt
        hole = prompt_ids.index(MASK)
        assert (prompt[hole] != MASK) if infill else (prompt == prompt_ids)
        content = tokenizer.decode(answer, skip_special_tokens=True)
        assert body["choices"][0]["message"]["content"] == content


def test_completion_echo_shows_the_filled_prompt(server, tokenizer, reference_model):
    base, model = server
    text = "The capital of<|mdm_mask|> is<|mdm_mask|>."
    prompt_ids = tokenizer(text).input_ids
    answer, prompt = _infill_reference(
        reference_model,
        prompt_ids,
        4,
        gen_length=8,
        steps=8,
        mode="dual",
        infill=True,
    )
    response = requests.post(
        f"{base}/v1/completions",
        json={
            "model": model,
            "prompt": text,
            "max_tokens": 8,
            "temperature": 0,
            "echo": True,
            "vllm_xargs": {"block_length": 4, "steps": 8},
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    fills = [prompt[i] for i, t in enumerate(prompt_ids) if t == MASK]
    assert fills != [MASK, MASK]

    def piece(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    filled_text = f"The capital of{piece(fills[0])} is{piece(fills[1])}."
    expected = filled_text + tokenizer.decode(answer, skip_special_tokens=True)
    assert response.json()["choices"][0]["text"] == expected


LM_EVAL_TASK = """\
task: dynin_local_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function scoring.process_results
generation_kwargs:
  until: ["<|endoftext|>"]
  max_gen_toks: 8
  temperature: 0
  vllm_xargs:
    block_length: 4
    steps: 8
    mode: exact
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

LM_EVAL_SCORING = """\
def process_results(doc, results):
    return {"acc": float(results[0] == doc["answer"])}
"""


def test_lm_eval_local_task_end_to_end(server, tokenizer, reference_model, tmp_path):
    """lm-eval's ``local-completions`` model runs a local ``generate_until``
    task through the server, with the denoising settings in the task's
    ``generation_kwargs``; its score is the one the reference gives."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    base, model = server
    questions = ["Name a color.", "Count to three.", "Say hello.", "Pick a number."]
    expected = []
    for question in questions:
        ids = tokenizer(question).input_ids
        answer = reference_generate(
            reference_model, ids, gen_length=8, block_length=4, steps=8, mode="exact"
        ).answer
        expected.append(
            tokenizer.decode(truncate_at_eos(answer, {EOS}), skip_special_tokens=True)
        )
    # Half the targets are the reference answers, half are not.
    docs = [
        {"question": q, "answer": a if i % 2 == 0 else a + " (wrong)"}
        for i, (q, a) in enumerate(zip(questions, expected, strict=True))
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "dynin_local_qa.yaml").write_text(LM_EVAL_TASK.format(data=data))
    (tmp_path / "scoring.py").write_text(LM_EVAL_SCORING)

    results = simple_evaluate(
        model="local-completions",
        model_args=(
            f"model={model},base_url={base}/v1/completions,"
            f"tokenizer={tokenizer.name_or_path},tokenized_requests=False,"
            "num_concurrent=2,max_retries=1"
        ),
        tasks=["dynin_local_qa"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    samples = results["samples"]["dynin_local_qa"]
    responses = {s["doc"]["question"]: s["filtered_resps"][0] for s in samples}
    assert responses == dict(zip(questions, expected, strict=True))
    assert results["results"]["dynin_local_qa"]["acc,none"] == 0.5


# --------------------------------------------------------------------------
# Masked-diffusion likelihoods (completions with echo and logprobs)
# --------------------------------------------------------------------------
LIKELIHOOD_SEED = 11


def _likelihood_completion(base, model, prompt_ids, continuation_len, **overrides):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    body = {
        "model": model,
        "prompt": prompt_ids,
        "echo": True,
        "logprobs": 1,
        "max_tokens": 1,
        "seed": LIKELIHOOD_SEED,
        "extra_body": {
            "vllm_xargs": {
                "likelihood_tokens": continuation_len,
                "mc_num": 8,
                "mc_batch_size": 4,
            }
        },
    }
    body.update(overrides)
    return client.completions.create(**body)


@pytest.mark.parametrize("max_tokens", [1, 0])
def test_likelihood_through_completions_echo(
    server, tokenizer, reference_model, max_tokens
):
    """lm-eval's loglikelihood payload (``echo``, ``logprobs=1``, ``max_tokens``
    0 or 1) plus the split: the continuation's token logprobs add up to the
    reference estimate."""
    from dynin_vllm.reference.likelihood import log_likelihood

    base, model = server
    context = tokenizer("Question: what color is the sky? Answer:").input_ids
    continuation = tokenizer(" blue, mostly", add_special_tokens=False).input_ids
    response = _likelihood_completion(
        base, model, context + continuation, len(continuation), max_tokens=max_tokens
    )
    logprobs = response.choices[0].logprobs
    generated = max_tokens  # the echoed prompt, then the generated token (if any)
    assert len(logprobs.token_logprobs) == len(context) + len(continuation) + generated
    scored = logprobs.token_logprobs[len(context) : len(context) + len(continuation)]
    want = log_likelihood(
        reference_model,
        context,
        continuation,
        mc_num=8,
        batch_size=4,
        seed=LIKELIHOOD_SEED,
    )
    assert sum(scored) == pytest.approx(want, rel=1e-5)
    assert logprobs.token_logprobs[1 : len(context)] == [0.0] * (len(context) - 1)


@pytest.mark.parametrize(
    ("prompt_len", "xargs", "field"),
    [
        (6, {"likelihood_tokens": 0}, "likelihood_tokens"),  # empty continuation
        (6, {"likelihood_tokens": 6}, "likelihood_tokens"),  # no context
        (6, {"likelihood_tokens": 2, "mc_num": 0}, "mc_num"),
        (6, {"likelihood_tokens": 2, "mc_num": 100000}, "mc_num"),
        (6, {"likelihood_tokens": 2, "mc_num": 8, "mc_batch_size": 5}, "mc_batch_size"),
        (600, {"likelihood_tokens": 2}, "prompt"),  # over the model length (512)
    ],
)
def test_bad_likelihood_requests_get_400_naming_the_field(
    server, prompt_len, xargs, field
):
    import openai

    base, model = server
    prompt = [126080, *range(1000, 1000 + prompt_len - 1)]
    with pytest.raises(openai.BadRequestError) as err:
        _likelihood_completion(base, model, prompt, 0, extra_body={"vllm_xargs": xargs})
    assert field in str(err.value)
    ok = _likelihood_completion(base, model, [126080, 5, 6, 7], 2)
    assert ok.choices[0].logprobs.token_logprobs[-1] == 0.0


LM_EVAL_MC_TASK = """\
task: dynin_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.parametrize("num_concurrent", [1, 2])
def test_lm_eval_multiple_choice_task_end_to_end(
    server, tokenizer, reference_model, tmp_path, num_concurrent
):
    """A local multiple-choice task through lm-eval's completions path
    (``dynin-completions``): every choice's loglikelihood is the reference
    estimate for the tokens lm-eval sent, and so is the accuracy."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from dynin_vllm.reference.likelihood import log_likelihood
    from dynin_vllm.serving.lm_eval_model import DyninCompletionsAPI

    base, model = server
    docs = [
        {"question": "The sky is", "choices": ["blue", "green", "loud"], "label": 0},
        {"question": "Two plus two is", "choices": ["four", "seven"], "label": 1},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "dynin_local_mc.yaml").write_text(LM_EVAL_MC_TASK.format(data=data))

    sent = []

    class Recording(DyninCompletionsAPI):
        def _create_payload(self, messages, generate=False, **kwargs):
            payload = super()._create_payload(messages, generate=generate, **kwargs)
            sent.append(payload)
            return payload

    lm = Recording(
        model=model,
        base_url=f"{base}/v1/completions",
        tokenizer=tokenizer.name_or_path,
        tokenizer_backend="huggingface",
        num_concurrent=num_concurrent,
        max_retries=1,
        mc_num=8,
    )
    results = simple_evaluate(
        model=lm,
        tasks=["dynin_local_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    assert len(sent) == 5
    want = {}
    for payload in sent:
        (prompt,) = payload["prompt"]
        n = payload["vllm_xargs"]["likelihood_tokens"]
        want[tokenizer.decode(prompt[-n:])] = log_likelihood(
            reference_model,
            prompt[:-n],
            prompt[-n:],
            mc_num=8,
            batch_size=8,
            seed=payload["seed"],
        )
    samples = results["samples"]["dynin_local_mc"]
    correct = 0
    for sample in samples:
        doc = sample["doc"]
        got = [resp[0][0] for resp in sample["resps"]]
        expected = [want[" " + choice] for choice in doc["choices"]]
        assert got == pytest.approx(expected, rel=1e-5)
        correct += max(range(len(expected)), key=expected.__getitem__) == doc["label"]
    assert results["results"]["dynin_local_mc"]["acc,none"] == correct / len(docs)


# --------------------------------------------------------------------------
# Image understanding (chat with an image)
# --------------------------------------------------------------------------
def _data_url(image, fmt: str = "PNG") -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return (
        f"data:image/{fmt.lower()};base64,"
        + base64.b64encode(buffer.getvalue()).decode()
    )


def _image_chat(base, model, parts, **extra):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": parts}],
        max_tokens=8,
        temperature=0,
        extra_body={"vllm_xargs": {"block_length": 4, "steps": 8}, **extra},
    )


def test_chat_with_a_data_url_image_matches_the_reference(
    server, tokenizer, reference_model, dynin_checkpoint
):
    import numpy as np
    from PIL import Image

    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.reference.media_prompts import image_understanding_prompt

    base, model = server
    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    question = "What is in this image?"
    prompt = image_understanding_prompt(
        tokenizer, load_magvit2(dynin_checkpoint / "magvitv2"), image, question
    )
    want = _expected_text(
        tokenizer, reference_model, prompt, gen_length=8, block_length=4, steps=8
    )
    response = _image_chat(
        base,
        model,
        [
            {"type": "image_url", "image_url": {"url": _data_url(image)}},
            {"type": "text", "text": question},
        ],
    )
    assert response.choices[0].message.content == want
    assert response.usage.prompt_tokens == len(prompt)


@pytest.mark.parametrize(
    ("parts", "extra", "message"),
    [
        (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            {},
            "Failed to load image",
        ),
        ("two images", {}, "At most 1 image"),
        (
            # vLLM refuses per-request processor options unless the server
            # trusts them (--trust-request-mm-kwargs); --mm-processor-kwargs
            # sets them for every request.
            "one image",
            {"mm_processor_kwargs": {"image_resolution": 64}},
            "mm_processor_kwargs",
        ),
    ],
)
def test_bad_image_chat_gets_400_and_the_server_goes_on(server, parts, extra, message):
    import numpy as np
    import openai
    from PIL import Image

    base, model = server
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    part = {"type": "image_url", "image_url": {"url": _data_url(image)}}
    if parts == "two images":
        parts = [part, part]
    elif parts == "one image":
        parts = [part]
    with pytest.raises(openai.BadRequestError) as err:
        _image_chat(base, model, [*parts, {"type": "text", "text": "Hi"}], **extra)
    assert message in str(err.value)
    ok = _image_chat(base, model, [part, {"type": "text", "text": "Hi"}])
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_chat_with_a_video_url_matches_the_reference(
    server, tokenizer, reference_model, dynin_checkpoint, tmp_path
):
    """A video data URL: vLLM's loader decodes upstream's 5 frames (the
    plugin's default), each encoded at the server's ``video_resolution``."""
    import base64

    import cv2
    import numpy as np

    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.reference.media_prompts import video_understanding_prompt

    base, model = server
    frames = np.random.default_rng(4).integers(0, 255, (9, 40, 56, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (56, 40))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    question = "What happens here?"
    prompt = video_understanding_prompt(
        tokenizer,
        load_magvit2(dynin_checkpoint / "magvitv2"),
        str(path),
        question,
        resolution=64,
    )
    want = _expected_text(
        tokenizer, reference_model, prompt, gen_length=8, block_length=4, steps=8
    )
    response = _image_chat(
        base,
        model,
        [
            {"type": "video_url", "video_url": {"url": url}},
            {"type": "text", "text": question},
        ],
    )
    assert response.usage.prompt_tokens == len(prompt)
    assert response.choices[0].message.content == want


# --------------------------------------------------------------------------
# Speech recognition: chat with audio, /v1/audio/transcriptions
# --------------------------------------------------------------------------
ASR = "Transcribe the given audio."


def _openai(base):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def _audio_part(data: bytes, fmt: str = "wav") -> dict:
    import base64

    encoded = base64.b64encode(data).decode()
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": fmt}}


@pytest.fixture(scope="module")
def emova(dynin_checkpoint):
    from dynin_vllm.multimodal.emova import load_emova

    return load_emova(dynin_checkpoint / "emova_speech_tokenizer")


def _speech_reference(tokenizer, emova, reference_model, samples, **kwargs):
    from dynin_vllm.reference.media_prompts import speech_recognition_prompt

    prompt = speech_recognition_prompt(
        tokenizer, emova, samples, ASR, sample_rate=16000
    )
    return prompt, _expected_text(tokenizer, reference_model, prompt, **kwargs)


def test_chat_with_input_audio_matches_the_reference(
    server, tokenizer, reference_model, emova
):
    """The same clip as an ``input_audio`` part and as an ``audio_url`` data
    URL."""
    import base64

    from dynin_vllm.testing.media_samples import audio_bytes, speech_like

    base, model = server
    clip = speech_like(2)
    prompt, want = _speech_reference(
        tokenizer, emova, reference_model, clip, gen_length=8, block_length=4, steps=8
    )
    data = audio_bytes(clip)
    url = "data:audio/wav;base64," + base64.b64encode(data).decode()
    for part in (
        _audio_part(data),
        {"type": "audio_url", "audio_url": {"url": url}},
    ):
        response = _image_chat(base, model, [part, {"type": "text", "text": ASR}])
        assert response.choices[0].message.content == want, part["type"]
        assert response.usage.prompt_tokens == len(prompt)


#: (container, sample rate, channels) of the transcription uploads: what
#: libsndfile decodes, at every rate and layout, and two containers only
#: PyAV decodes.
UPLOADS = [
    (fmt, rate, channels)
    for fmt in ("WAV", "FLAC", "MP3")
    for rate in (8000, 22050, 44100, 48000)
    for channels in (1, 2)
] + [("M4A", 44100, 1), ("WEBM", 48000, 1)]


def test_transcriptions_of_any_format_rate_and_layout(
    server, tokenizer, reference_model, emova
):
    """Every upload is decoded and resampled to 16 kHz mono by vLLM (PyAV);
    its transcript is the reference's for that waveform, under the
    speech-recognition defaults (blocks of 2, one token per step)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from vllm.multimodal.audio import resample_audio_pyav
    from vllm.multimodal.media.audio import load_audio

    from dynin_vllm.testing.media_samples import (
        PYAV_FORMATS,
        audio_bytes,
        pyav_audio_bytes,
        speech_like,
    )

    base, model = server
    client = _openai(base)
    clip = speech_like(1)
    files = []
    for fmt, rate, channels in UPLOADS:
        samples = resample_audio_pyav(clip, orig_sr=16000, target_sr=rate)
        if channels == 2:
            samples = np.stack([samples, 0.5 * samples], axis=1)
        if fmt in PYAV_FORMATS:
            files.append(pyav_audio_bytes(samples, rate, fmt))
        else:
            files.append(audio_bytes(samples, rate, fmt))

    def transcribe(index: int):
        fmt = UPLOADS[index][0].lower()
        return client.audio.transcriptions.create(
            model=model,
            file=(f"clip.{fmt}", files[index]),
            temperature=0,
            response_format="json" if index % 2 else "text",
            extra_body={"max_completion_tokens": 4},
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(transcribe, range(len(files))))
    transcripts = set()
    for upload, data, result in zip(UPLOADS, files, results, strict=True):
        decoded, _ = load_audio(io.BytesIO(data), sr=16000)
        _, want = _speech_reference(
            tokenizer,
            emova,
            reference_model,
            decoded.astype(np.float32),
            gen_length=4,
            block_length=2,
            steps=4,
            mode="dual",
        )
        # vLLM 0.32 answers response_format=text with its JSON body.
        text = json.loads(result)["text"] if isinstance(result, str) else result.text
        assert text.strip() == want.strip(), upload
        transcripts.add(want)
    # The rates change the waveform, so the transcripts are not all alike.
    assert len(transcripts) > 1


def test_long_audio_is_transcribed_in_context_sized_pieces(
    server, tokenizer, reference_model, emova
):
    """25 s of audio: vLLM splits it into pieces the 512-token context holds
    (13 s here, 20 s at most), each transcribed on its own."""
    import io

    from vllm.multimodal.audio import split_audio
    from vllm.multimodal.media.audio import load_audio

    from dynin_vllm.model.dynin_omni import transcription_clip_seconds
    from dynin_vllm.testing.media_samples import audio_bytes, speech_like

    base, model = server
    clip = np.concatenate([speech_like(seed, seconds=5.0) for seed in range(5)])
    # 16 answer slots: long answers of the random tiny model reach near-ties
    # that float rounding can flip (the 128-slot default is checked offline).
    result = _openai(base).audio.transcriptions.create(
        model=model,
        file=("long.wav", audio_bytes(clip)),
        temperature=0,
        extra_body={"max_completion_tokens": 16},
    )
    assert transcription_clip_seconds(512) == 13
    decoded, _ = load_audio(io.BytesIO(audio_bytes(clip)), sr=16000)
    pieces = split_audio(
        audio_data=decoded.astype(np.float32),
        sample_rate=16000,
        max_clip_duration_s=13,
        overlap_duration_s=1,
        min_energy_window_size=1600,
    )
    assert len(pieces) == 2
    wants = [
        _speech_reference(
            tokenizer,
            emova,
            reference_model,
            piece,
            gen_length=16,
            block_length=2,
            steps=16,
            mode="dual",
        )[1].strip()
        for piece in pieces
    ]
    assert result.text == " ".join(wants)
    assert result.usage.seconds == 25


def _metric(base: str, name: str) -> float:
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_bad_media_gets_400_naming_the_part_while_good_requests_run(
    server, tokenizer, reference_model, emova, tmp_path
):
    """Bad images, videos and audio over HTTP, sent while good image and
    audio requests denoise: each bad one gets a 400 naming the part, the
    good ones finish with the reference's answer, and the KV cache empties."""
    import base64
    import io
    import struct
    import threading
    import zlib

    import openai
    from PIL import Image

    from dynin_vllm.testing.media_samples import audio_bytes, speech_like

    base, model = server
    client = _openai(base)
    clip = speech_like(8)
    _, want = _speech_reference(
        tokenizer,
        emova,
        reference_model,
        clip,
        gen_length=64,
        block_length=4,
        steps=64,
        mode="exact",
    )
    good: dict[str, str] = {}

    def run_good():
        response = client.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        _audio_part(audio_bytes(clip)),
                        {"type": "text", "text": ASR},
                    ],
                }
            ],
            max_tokens=64,
            temperature=0,
            extra_body={
                "vllm_xargs": {"mode": "exact", "block_length": 4, "steps": 64}
            },
        )
        good["audio"] = response.choices[0].message.content

    thread = threading.Thread(target=run_good)
    thread.start()

    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(png, format="PNG")

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    # A PNG header claiming 30000 x 30000 pixels (past PIL's bomb limit).
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )

    def image_url(data: bytes, mime: str = "image/png") -> dict:
        url = f"data:{mime};base64," + base64.b64encode(data).decode()
        return {"type": "image_url", "image_url": {"url": url}}

    def video_url(data: bytes) -> dict:
        url = "data:video/mp4;base64," + base64.b64encode(data).decode()
        return {"type": "video_url", "video_url": {"url": url}}

    cases = {
        "corrupt image": ([image_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)], "image"),
        "truncated image": ([image_url(png.getvalue()[:60])], "image"),
        "decompression bomb": ([image_url(bomb)], "image"),
        "bad data URL": (
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}],
            "data",
        ),
        "unopenable video": ([video_url(b"not a video at all")], "video"),
        "corrupt audio": ([_audio_part(b"RIFF" + b"\0" * 40)], "audio"),
        "empty audio": ([_audio_part(b"")], "audio"),
        "short audio": (
            [_audio_part(audio_bytes(np.full(100, 0.1, np.float32)))],
            "too short",
        ),
        "long audio": ([_audio_part(audio_bytes(speech_like(0, 21.0)))], "20.48 s"),
        "unsupported audio": ([_audio_part(png.getvalue(), "mp3")], "audio"),
        "two audios": (
            [_audio_part(audio_bytes(clip)), _audio_part(audio_bytes(clip))],
            "At most 1 audio",
        ),
        "audio and image": (
            # A short clip: both spans must fit the context to reach the check.
            [_audio_part(audio_bytes(speech_like(0, 0.3))), image_url(png.getvalue())],
            "one media item per prompt",
        ),
    }
    for name, (parts, message) in cases.items():
        try:
            _image_chat(base, model, [*parts, {"type": "text", "text": "Hi"}])
        except openai.BadRequestError as err:
            assert message.lower() in str(err).lower(), (name, str(err))
        else:
            raise AssertionError(f"{name}: accepted")
    for data in (b"", b"garbage" * 20, audio_bytes(np.zeros(100, np.float32))):
        with pytest.raises(openai.BadRequestError):
            client.audio.transcriptions.create(model=model, file=("x.wav", data))
    thread.join(timeout=300)
    assert good == {"audio": want}
    for _ in range(50):
        if _metric(base, "vllm:kv_cache_usage_perc") == 0:
            break
        time.sleep(0.2)
    assert _metric(base, "vllm:kv_cache_usage_perc") == 0


# --- image generation and speech synthesis -------------------------------------
T2I_SIZE, T2I_SLOTS, T2I_STEPS = 64, 16, 4
TTS_SLOTS = 16
TTS_TEXT = "Hello there."


def _t2i_reference_pixels(
    tokenizer, reference_model, magvit, prompt: str, step_pixels=None
):
    """The reference image's pixels; ``step_pixels`` (a list) also gets each
    step's prediction decoded, as upstream's step-wise decoding shows it."""
    from dynin_vllm.reference import prompts
    from dynin_vllm.reference.media_generation import maskgit_generate

    step_codes: list[list[int]] = []
    ids, mask = prompts.t2i_prompt(tokenizer, prompt, T2I_SLOTS)
    uncond, uncond_mask = prompts.t2i_prompt(tokenizer, "", T2I_SLOTS)
    codes = maskgit_generate(
        reference_model,
        ids,
        mask,
        num_slots=T2I_SLOTS,
        codebook_start=len(tokenizer),
        steps=T2I_STEPS,
        guidance_scale=3.5,
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        temperature=0.0,
        on_step=lambda step, codes: step_codes.append(codes),
    )
    import torch

    from dynin_vllm.multimodal.media import postprocess_images

    with torch.no_grad():
        pixels = magvit.decode(torch.tensor([codes]), (4, 4))
        if step_pixels is not None:
            decoded = magvit.decode(torch.tensor(step_codes), (4, 4))
            step_pixels.extend(postprocess_images(decoded))
    return postprocess_images(pixels)[0]


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """The same codes decoded apart: a rare channel may round the other way."""
    diff = np.abs(got.astype(int) - want.astype(int))
    return bool(diff.max() <= 1 and (diff > 0).mean() < 1e-3)


def test_streamed_image_sends_partial_images_before_the_final_one(
    server, tokenizer, reference_model, dynin_checkpoint
):
    """``stream`` with ``partial_images``: the canvas's prediction after
    evenly spaced steps (here steps 1 and 2 of 4), as upstream's step-wise
    decoding shows it, then the image the unstreamed request gives."""
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2

    base, model = server
    client = _openai(base)
    magvit = load_magvit2(dynin_checkpoint / "magvitv2").float().eval()
    steps: list[np.ndarray] = []
    want = _t2i_reference_pixels(
        tokenizer, reference_model, magvit, "a red cube", step_pixels=steps
    )
    events = list(
        client.images.generate(
            model=model,
            prompt="a red cube",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": T2I_STEPS, "temperature": 0},
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event, step in zip(events[:2], steps[:2], strict=True):
        assert event.size == "64x64" and _close(_png_pixels(event.b64_json), step)
    assert not _close(steps[0], want)  # a partial image is not the result
    final = events[-1]
    assert _close(_png_pixels(final.b64_json), want)
    assert final.usage.output_tokens == T2I_SLOTS + 1

    source = ("source.png", _edit_source_png(), "image/png")
    edit_events = list(
        client.images.edit(
            model=model,
            image=source,
            prompt="make it blue",
            size="64x64",
            stream=True,
            partial_images=1,
            extra_body={"num_inference_steps": 3, "seed": 4},
        )
    )
    assert [e.type for e in edit_events] == [
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    (unstreamed,) = client.images.edit(
        model=model,
        image=source,
        prompt="make it blue",
        size="64x64",
        extra_body={"num_inference_steps": 3, "seed": 4},
    ).data
    assert edit_events[-1].b64_json == unstreamed.b64_json


def _png_pixels(b64: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_image_generation_through_the_sdk_matches_the_reference(
    server, tokenizer, reference_model, dynin_checkpoint
):
    from dynin_vllm.multimodal.image_tokenizer import load_magvit2

    base, model = server
    client = _openai(base)
    extra = {"num_inference_steps": T2I_STEPS, "temperature": 0}
    result = client.images.generate(
        model=model, prompt="a red cube", size="64x64", n=2, extra_body=extra
    )
    assert result.size == "64x64" and result.output_format == "png"
    assert len(result.data) == 2
    assert result.usage.output_tokens == 2 * (T2I_SLOTS + 1)
    magvit = load_magvit2(dynin_checkpoint / "magvitv2").float().eval()
    want = _t2i_reference_pixels(tokenizer, reference_model, magvit, "a red cube")
    other = _t2i_reference_pixels(tokenizer, reference_model, magvit, "a green cone")
    assert np.abs(other.astype(int) - want.astype(int)).max() > 8
    for item in result.data:
        got = _png_pixels(item.b64_json)
        assert got.shape == (64, 64, 3)
        # The same codes: the decoders (server batch of 2, here one image, other
        # thread counts) may round a rare pixel channel the other way.
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_image_seeds_reproduce_and_n_is_honoured(server):
    base, model = server
    client = _openai(base)

    def images(seed: int, n: int = 1, fmt: str = "png") -> list[str]:
        result = client.images.generate(
            model=model,
            prompt="a blue sphere",
            size="64x32",
            n=n,
            output_format=fmt,
            extra_body={"num_inference_steps": 3, "seed": seed},
        )
        return [d.b64_json for d in result.data]

    first = images(11, n=3)
    assert len(first) == 3 and len(set(first)) == 3  # seeds 11, 12, 13
    assert images(11) == first[:1]
    assert images(12) == first[1:2]
    assert images(99) != first[:1]
    import base64
    import io

    from PIL import Image

    for fmt in ("jpeg", "webp"):
        (data,) = images(11, fmt=fmt)
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == fmt.upper() and image.size == (64, 32)


def test_speech_through_the_sdk_matches_the_reference(
    server, tokenizer, reference_model, emova
):
    import io

    import soundfile as sf

    from dynin_vllm.reference import prompts
    from dynin_vllm.reference.media_generation import speech_generate
    from dynin_vllm.serving.media_encoding import audio_bytes
    from dynin_vllm.serving.media_endpoints import voice_condition

    base, model = server
    client = _openai(base)
    extra = {"max_new_tokens": TTS_SLOTS, "temperature": 0, "seed": 7}
    audio = client.audio.speech.create(
        model=model, input=TTS_TEXT, voice="coral", extra_body=extra
    )
    wave, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 22050 and wave.ndim == 1 and wave.size > 0
    ids, mask = prompts.t2s_prompt(
        tokenizer, TTS_TEXT, "Generate speech for the given text.", TTS_SLOTS
    )
    _, units = speech_generate(
        reference_model,
        ids,
        mask,
        speech_start=len(tokenizer) + prompts.IMAGE_CODEBOOK,
        steps=TTS_SLOTS,
        cfg_scale=2.5,
    )
    import torch

    expected = emova.decode(
        units, voice_condition("coral"), generator=torch.Generator().manual_seed(7)
    )
    want, _ = sf.read(
        io.BytesIO(audio_bytes(expected.waveform, 22050, "wav")), dtype="int16"
    )
    got, _ = sf.read(io.BytesIO(audio.content), dtype="int16")
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    # Another voice is another style vector; the units are the same.
    other = client.audio.speech.create(
        model=model, input=TTS_TEXT, voice="onyx", extra_body=extra
    )
    assert other.content != audio.content


def test_speech_formats_seeds_and_speed(server):
    import io

    import av

    base, model = server
    client = _openai(base)

    def speak(**kwargs) -> bytes:
        extra = {"max_new_tokens": TTS_SLOTS, "seed": kwargs.pop("seed", 3)}
        return client.audio.speech.create(
            model=model, input=TTS_TEXT, voice="alloy", extra_body=extra, **kwargs
        ).content

    wav = speak()
    assert speak() == wav and speak(seed=4) != wav
    assert len(speak(speed=2.0)) < len(wav) < len(speak(speed=0.5))
    assert len(speak(response_format="pcm")) == len(wav) - 44  # 16-bit, no header
    for fmt in ("flac", "mp3", "opus", "aac"):
        with av.open(io.BytesIO(speak(response_format=fmt))) as container:
            frames = list(container.decode(container.streams.audio[0]))
        assert sum(f.samples for f in frames) > 0, fmt
    # Concurrent requests finish together and share a U2S batch: each keeps
    # the audio it gets alone (its own seed, speed and voice).
    from concurrent.futures import ThreadPoolExecutor

    def concurrent(i: int) -> bytes:
        return speak(seed=20 + i, speed=(1.0, 0.5, 2.0)[i])

    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(concurrent, range(3)))
    for i, audio in enumerate(together):
        alone = np.frombuffer(concurrent(i)[44:], dtype="<i2").astype(int)
        got = np.frombuffer(audio[44:], dtype="<i2").astype(int)
        assert got.shape == alone.shape and np.abs(got - alone).max() <= 2, i


def test_bad_generation_requests_get_400_naming_the_field_while_good_ones_run(
    server,
):
    import threading

    base, model = server
    client = _openai(base)
    good: dict[str, int] = {}

    def run_good():
        result = client.images.generate(
            model=model,
            prompt="a red cube",
            size="64x64",
            extra_body={"num_inference_steps": 24, "seed": 1},
        )
        good["images"] = len(result.data)

    thread = threading.Thread(target=run_good)
    thread.start()
    image_cases = {
        "size": [{"size": "100x100"}, {"size": "2048x2048"}, {"size": "big"}],
        "n": [{"n": 0}, {"n": 9}, {"n": 2, "stream": True}],
        "prompt": [{"prompt": ""}, {"prompt": 5}],
        "response_format": [{"response_format": "url"}],
        "output_format": [{"output_format": "gif"}],
        "guidance_scale": [{"guidance_scale": -1}],
        "num_inference_steps": [{"num_inference_steps": 0}],
        "temperature": [{"temperature": "hot"}],
        "partial_images": [
            {"stream": True, "partial_images": 4},
            {"partial_images": 2},
        ],
        "stream": [{"stream": "yes"}],
    }
    for field, bodies in image_cases.items():
        for body in bodies:
            body = {"model": model, "prompt": "x", "size": "64x64", **body}
            response = requests.post(
                f"{base}/v1/images/generations", json=body, timeout=60
            )
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["param"] == field, (body, response.text)
    speech_cases = {
        "voice": [{"voice": "nobody"}, {"voice": None}],
        "input": [{"input": ""}, {"input": "x" * 5000}],
        "response_format": [{"response_format": "ogg"}],
        "speed": [{"speed": 9}],
        "max_new_tokens": [{"max_new_tokens": 600}],
        "guidance_scale": [{"guidance_scale": 99}],
    }
    for field, bodies in speech_cases.items():
        for body in bodies:
            body = {"model": model, "input": "hi", "voice": "alloy", **body}
            response = requests.post(f"{base}/v1/audio/speech", json=body, timeout=60)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["param"] == field, (body, response.text)
    thread.join(timeout=300)
    assert good == {"images": 1}
    for _ in range(50):
        if _metric(base, "vllm:kv_cache_usage_perc") == 0:
            break
        time.sleep(0.2)
    assert _metric(base, "vllm:kv_cache_usage_perc") == 0


def _edit_source_png() -> bytes:
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, 80, dtype=np.uint8)
    pixels = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((80, 80), 90)], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_edit_through_the_sdk_matches_the_reference(
    server, tokenizer, reference_model, dynin_checkpoint
):
    import torch

    from dynin_vllm.multimodal.image_tokenizer import load_magvit2
    from dynin_vllm.multimodal.media import postprocess_images
    from dynin_vllm.reference import prompts
    from dynin_vllm.reference.media_generation import (
        I2I_UNCOND_PREFIX,
        maskgit_generate,
    )
    from dynin_vllm.reference.media_prompts import image_codes

    base, model = server
    client = _openai(base)
    source = _edit_source_png()
    result = client.images.edit(
        model=model,
        image=("source.png", source, "image/png"),
        prompt="make it blue",
        size="64x64",
        n=2,
        extra_body={"num_inference_steps": 4, "temperature": 0},
    )
    assert result.size == "64x64" and len(result.data) == 2
    assert result.usage.input_tokens_details.image_tokens == 16  # the source
    details = result.usage.input_tokens_details
    assert details.text_tokens + details.image_tokens == result.usage.input_tokens
    magvit = load_magvit2(dynin_checkpoint / "magvitv2").float().eval()
    offset = len(tokenizer)
    codes = image_codes(magvit, source, resolution=64)
    ids, mask = prompts.i2i_prompt(
        tokenizer, "make it blue", [offset + c for c in codes], 16
    )
    uncond, uncond_mask = prompts.i2i_prompt(
        tokenizer, "", [offset + c for c in codes], 16
    )
    edited = maskgit_generate(
        reference_model,
        ids,
        mask,
        num_slots=16,
        codebook_start=offset,
        steps=4,
        guidance_scale=3.5,
        uncond_prompt=uncond,
        uncond_attention_mask=uncond_mask,
        uncond_prefix_len=I2I_UNCOND_PREFIX,
        temperature=0.0,
    )
    with torch.no_grad():
        want = postprocess_images(magvit.decode(torch.tensor([edited]), (4, 4)))[0]
    for item in result.data:
        diff = np.abs(_png_pixels(item.b64_json).astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_bad_edits_get_400_naming_the_field(server):
    base, model = server
    source = _edit_source_png()

    def edit(files, **fields):
        data = {"model": model, "prompt": "blue", "size": "64x64", **fields}
        return requests.post(
            f"{base}/v1/images/edits", data=data, files=files, timeout=60
        )

    png = ("s.png", source, "image/png")
    cases = [
        ([], {}, "image"),
        ([("image[]", png), ("image[]", png)], {}, "image"),
        (
            [("image", ("s.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))],
            {},
            "image",
        ),
        ([("image", ("s.png", b"", "image/png"))], {}, "image"),
        ([("image", png)], {"size": "64x32"}, "size"),
        ([("image", png)], {"n": "12"}, "n"),
        ([("image", png)], {"prompt": ""}, "prompt"),
    ]
    for files, fields, param in cases:
        response = edit(files, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"] == param, (fields, response.text)
    assert edit([("image", png)], num_inference_steps="2").status_code == 200
