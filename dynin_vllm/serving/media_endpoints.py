"""OpenAI's image-generation and speech endpoints for Dynin-Omni in ``vllm serve``.

- ``POST /v1/images/generations`` (JSON): text to image;
- ``POST /v1/images/edits`` (multipart): image editing, one source image;
- ``POST /v1/audio/speech`` (JSON): text to speech, raw audio bytes back.

Each request becomes engine requests built by
``dynin_vllm.multimodal.generation`` (one per image of ``n``), denoised in the
engine's steps beside every other request; the codes are then decoded by the
MAGVIT-v2 decoder or EMOVA's U2S off the event loop, on the GPU when the
server has one (``DYNIN_CODEC_DEVICE`` overrides), batched across concurrent
requests (``decode_batching``): images by size, utterances each with its own
seeded noise, speed and voice.

The routes mount from the plugin itself (``vllm_private.mount_endpoint_plugin``:
vLLM loads endpoint plugins only when ``VLLM_PLUGINS`` names them). On a
server whose model is not Dynin-Omni they answer 404.

Both image endpoints stream with ``stream: true`` (one image): server-sent
events ``image_generation.partial_image`` (``image_edit.*`` for edits) carry
the canvas's prediction decoded at ``partial_images`` (0-3) evenly spaced
denoising steps (``dynin_vllm.engine.previews``), then ``*.completed`` the
final image with its usage, as OpenAI streams them.

Errors follow vLLM's shape (``{"error": {"message", "type", "param",
"code"}}``); a bad field gets a 400 naming it, and nothing reaches the engine.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from vllm.logger import init_logger

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.generation import (
    IMAGE_TEXT_SLOT,
    PIXELS_PER_CODE,
    SPEECH_SLOTS,
    image_codes,
    image_editing_request,
    image_generation_request,
    speech_generation_request,
    speech_units,
)
from dynin_vllm.serving.decode_batching import DecodeBatcher
from dynin_vllm.serving.media_encoding import (
    AUDIO_FORMATS,
    AUDIO_MEDIA_TYPES,
    IMAGE_FORMATS,
    audio_bytes,
    image_b64,
)

logger = init_logger(__name__)

#: Architectures these endpoints serve.
ARCHITECTURES = ("DyninOmniModelLM",)
MAX_IMAGES = 8
#: The largest image side (pixels); a size must also fit the context.
MAX_IMAGE_SIDE = 1024
DEFAULT_IMAGE_SIZE = "512x512"
DEFAULT_EDIT_SIZE = "336x336"
#: The largest source image upload.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_SPEECH_INPUT = 4096  # characters, as OpenAI
MAX_STEPS = 1024
MAX_GUIDANCE = 50.0
MAX_TEMPERATURE = 10.0
#: The most partial images a streamed image may send (OpenAI's bound).
MAX_PARTIAL_IMAGES = 3

#: OpenAI's voices as EMOVA style conditions (gender, emotion, speed, pitch).
OPENAI_VOICES: dict[str, tuple[str, str, str, str]] = {
    "alloy": ("female", "neutral", "normal", "normal"),
    "ash": ("male", "neutral", "normal", "normal"),
    "ballad": ("male", "sad", "slow", "normal"),
    "cedar": ("male", "neutral", "normal", "low"),
    "coral": ("female", "happy", "normal", "normal"),
    "echo": ("male", "neutral", "normal", "low"),
    "fable": ("female", "neutral", "normal", "high"),
    "marin": ("female", "neutral", "slow", "normal"),
    "nova": ("female", "happy", "normal", "high"),
    "onyx": ("male", "neutral", "slow", "low"),
    "sage": ("female", "neutral", "slow", "low"),
    "shimmer": ("female", "surprised", "normal", "high"),
    "verse": ("male", "happy", "normal", "normal"),
}


class BadField(ValueError):
    """A request field is invalid (HTTP 400 naming it)."""

    def __init__(self, param: str, message: str, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def _error(message: str, param: str | None, status: int) -> JSONResponse:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(
        status, "InternalServerError"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status_code=status,
    )


def voice_condition(voice: Any) -> str:
    """The EMOVA style condition of ``voice`` (a condition or an OpenAI voice)."""
    from dynin_vllm.multimodal.emova import STYLE_CONDITIONS

    if isinstance(voice, dict):  # the SDK's {"id": ...} custom-voice form
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice:
        raise BadField("voice", "voice is required: an OpenAI voice or an EMOVA style")
    if voice in STYLE_CONDITIONS:
        return voice
    if voice in OPENAI_VOICES:
        g, e, s, p = OPENAI_VOICES[voice]
        return f"gender-{g}_emotion-{e}_speed-{s}_pitch-{p}"
    raise BadField(
        "voice",
        f"unknown voice {voice!r}: use one of {sorted(OPENAI_VOICES)} or an EMOVA "
        "style such as 'gender-female_emotion-neutral_speed-normal_pitch-normal'",
    )


# --- field checks -----------------------------------------------------------
def _text(body: dict, name: str, *, required: bool, limit: int | None = None):
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadField(name, f"'{name}' must be a non-empty string")
    if limit is not None and len(value) > limit:
        raise BadField(name, f"'{name}' is longer than {limit} characters")
    return value


def _number(body: dict, name: str, default: Any, lo: float, hi: float, integer=False):
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadField(name, f"'{name}' must be a number, got {value!r}")
    if integer and (isinstance(value, float) and not value.is_integer()):
        raise BadField(name, f"'{name}' must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BadField(name, f"'{name}' must be in [{lo}, {hi}], got {value}")
    return int(value) if integer else float(value)


def _choice(body: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(name) or default
    if value not in choices:
        raise BadField(name, f"'{name}' must be one of {list(choices)}, got {value!r}")
    return value


def parse_size(
    value: Any, max_model_len: int, *, editing: bool = False
) -> tuple[int, int]:
    """``"WxH"`` (multiples of 16, at most :data:`MAX_IMAGE_SIDE`, and a layout
    that fits the context) as ``(width, height)``; square when ``editing``."""
    if value in (None, "", "auto"):
        value = DEFAULT_EDIT_SIZE if editing else DEFAULT_IMAGE_SIZE
    try:
        width, height = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise BadField(
            "size", f"'size' must look like '512x512', got {value!r}"
        ) from None
    for side in (width, height):
        if side < PIXELS_PER_CODE or side % PIXELS_PER_CODE or side > MAX_IMAGE_SIDE:
            raise BadField(
                "size",
                f"'size' sides must be multiples of {PIXELS_PER_CODE} between "
                f"{PIXELS_PER_CODE} and {MAX_IMAGE_SIDE}, got {value!r}",
            )
    if editing and width != height:
        raise BadField("size", f"edited images are square, got {value!r}")
    slots = (width // PIXELS_PER_CODE) * (height // PIXELS_PER_CODE)
    # T2I: text slot, <|soi|>, slots, <|eoi|>; I2I adds <|i2i|> and the source.
    need = IMAGE_TEXT_SLOT + slots + 2 + (slots + 3 if editing else 0)
    if need > max_model_len:
        raise BadField(
            "size",
            f"'size' {value} needs {need} tokens; the model's context holds "
            f"{max_model_len}",
        )
    return width, height


# --- the codecs ---------------------------------------------------------------
#: Where the server runs the codecs: ``cuda``, ``cpu`` (or any torch device);
#: default the first GPU when there is one.
CODEC_DEVICE_ENV = "DYNIN_CODEC_DEVICE"


def codec_device() -> str:
    """The device the codecs run on (:data:`CODEC_DEVICE_ENV`, else CUDA when
    available, else the CPU)."""
    import os

    import torch

    chosen = os.environ.get(CODEC_DEVICE_ENV)
    if chosen:
        return chosen
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Codecs:
    """The model's codecs, loaded on first use on :func:`codec_device`; one
    call at a time (the serving layer batches them, see ``decode_batching``)."""

    model: str
    device: str = ""

    def __post_init__(self) -> None:
        self.device = self.device or codec_device()
        self._lock = threading.Lock()
        self._magvit = None
        self._emova = None

    def _load(self, which: str):
        if which == "magvit":
            from dynin_vllm.multimodal.image_tokenizer import load_magvit2

            env, subdir, repo = (
                loading.MAGVIT_PATH_ENV,
                loading.MAGVIT_SUBDIR,
                loading.MAGVIT_DEFAULT_REPO,
            )
            loader = load_magvit2
        else:
            from dynin_vllm.multimodal.emova import load_emova

            env, subdir, repo = (
                loading.EMOVA_PATH_ENV,
                loading.EMOVA_SUBDIR,
                loading.EMOVA_DEFAULT_REPO,
            )
            loader = load_emova
        directory = loading.locate_codec(
            self.model, env_var=env, subdir=subdir, default_repo=repo
        )
        return loader(directory).float().eval().to(self.device)

    def magvit(self):
        with self._lock:
            if self._magvit is None:
                self._magvit = self._load("magvit")
            return self._magvit

    def emova(self):
        with self._lock:
            if self._emova is None:
                self._emova = self._load("emova")
            return self._emova

    def decode_images(self, codes: list, grid: tuple[int, int]):
        """Codes ``[n, rows, cols]`` -> ``n`` uint8 images (one batched decode)."""
        import torch

        from dynin_vllm.multimodal.media import postprocess_images

        magvit = self.magvit()
        with self._lock, torch.no_grad():
            batch = torch.stack([c.reshape(-1) for c in codes]).to(self.device)
            return postprocess_images(magvit.decode(batch, grid).cpu())

    def encode_image(self, data: bytes, side: int) -> list[int]:
        """A source upload's MAGVIT-v2 codes at ``side`` pixels (shorter side
        resized, centre crop: upstream's ``image_transform``)."""
        import torch

        from dynin_vllm.multimodal.media import load_image, preprocess_image

        pixels = preprocess_image(load_image(data, field="image"), side)
        magvit = self.magvit()
        with self._lock, torch.no_grad():
            return magvit.encode(pixels[None].float().to(self.device))[0].tolist()

    def synthesize(self, items: list[SpeechJob], _key: Any = None) -> list:
        """EMOVA U2S of several utterances in one batch, each as it sounds
        alone (its own seeded noise, speed and style); ``(waveform, rate)``
        per item, an empty waveform for no units."""
        import numpy as np
        import torch

        from dynin_vllm.multimodal.emova import SpeechItem

        emova = self.emova()
        rate = emova.output_sample_rate
        spoken = [i for i, job in enumerate(items) if job.units]
        batch = []
        for i in spoken:
            job = items[i]
            generator = None
            if job.seed is not None:
                generator = torch.Generator().manual_seed(int(job.seed) % (1 << 63))
            batch.append(SpeechItem(job.units, job.condition, generator, 1 / job.speed))
        with self._lock:
            outputs = emova.decode_batch(batch) if batch else []
        results = [(np.zeros(0, dtype=np.float32), rate) for _ in items]
        for i, out in zip(spoken, outputs, strict=True):
            results[i] = (out.waveform, out.sample_rate)
        return results


@dataclass(frozen=True)
class SpeechJob:
    """One utterance for :meth:`Codecs.synthesize`."""

    units: list[int]
    condition: str
    speed: float
    seed: int | None


# --- serving ------------------------------------------------------------------
class MediaServing:
    """Per-server state of the media endpoints."""

    def __init__(self, engine_client: Any):
        self.engine = engine_client
        config = engine_client.model_config
        self.model = config.model
        self.served_name = getattr(config, "served_model_name", None) or config.model
        self.max_model_len = config.max_model_len
        self.codecs = Codecs(config.model)
        self.image_decoder = DecodeBatcher(self.codecs.decode_images)
        self.speech_decoder = DecodeBatcher(self.codecs.synthesize)

    @functools.cached_property
    def tokenizer(self) -> Any:
        return self.engine.renderer.get_tokenizer()

    @functools.cached_property
    def image_ids(self) -> range:
        """The vocabulary ids of image codes."""
        from dynin_vllm.multimodal.ids import VocabLayout

        layout = VocabLayout.from_tokenizer(self.tokenizer)
        return range(layout.image_offset, layout.speech_offset)

    async def _run(self, request: Any, request_id: str) -> Any:
        final = None
        async for output in self.engine.generate(
            request.prompt, request.sampling_params, request_id
        ):
            final = output
        if final is None or not final.finished:
            raise RuntimeError("the engine returned no final output")
        completion = final.outputs[0]
        if completion.finish_reason == "error":
            raise RuntimeError("the engine failed the request")
        return final

    def _image_options(self, body: dict) -> dict[str, Any]:
        """The fields both image endpoints share, checked."""
        _choice(body, "response_format", "b64_json", ("b64_json",))
        stream = _flag(body, "stream")
        n = _number(body, "n", 1, 1, MAX_IMAGES, integer=True)
        partial = _number(body, "partial_images", 0, 0, MAX_PARTIAL_IMAGES, True)
        if stream and n > 1:
            raise BadField("n", "a streamed response carries one image; set n to 1")
        if partial and not stream:
            raise BadField("partial_images", "partial images need 'stream': true")
        return {
            "stream": stream,
            "partial_images": partial,
            "prompt": _text(body, "prompt", required=True),
            "n": n,
            "output_format": _choice(body, "output_format", "png", IMAGE_FORMATS),
            "seed": _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
            "steps": _number(body, "num_inference_steps", None, 1, MAX_STEPS, True),
            "guidance_scale": _number(body, "guidance_scale", None, 0, MAX_GUIDANCE),
            "temperature": _number(body, "temperature", 1.0, 0, MAX_TEMPERATURE),
        }

    async def images(self, body: dict) -> dict:
        options = self._image_options(body)
        width, height = parse_size(body.get("size"), self.max_model_len)
        negative = _text(body, "negative_prompt", required=False)
        seed = options["seed"]
        requests = [
            image_generation_request(
                self.tokenizer,
                options["prompt"],
                size=(width, height),
                seed=None if seed is None else seed + i,
                steps=options["steps"],
                guidance_scale=options["guidance_scale"],
                temperature=options["temperature"],
                negative_prompt=negative,
                num_previews=options["partial_images"],
            )
            for i in range(options["n"])
        ]
        await asyncio.to_thread(self._require, "magvit")
        size = f"{width}x{height}"
        if options["stream"]:
            return self._stream_image(requests[0], options, size, "image_generation")
        return await self._finish_images(requests, options, size)

    async def edits(self, form: Any) -> dict:
        body = {
            k: _form_value(v)
            for k, v in form.multi_items()
            if k not in ("image", "image[]")
        }
        uploads = form.getlist("image") + form.getlist("image[]")
        if not uploads:
            raise BadField("image", "'image' is required: the image to edit")
        if len(uploads) > 1:
            raise BadField(
                "image", "one source image per edit, as Dynin-Omni is trained"
            )
        if body.get("mask") is not None or form.get("mask") is not None:
            raise BadField("mask", "masked edits are not supported")
        options = self._image_options(body)
        side, _ = parse_size(body.get("size"), self.max_model_len, editing=True)
        data = await _upload_bytes(uploads[0])
        await asyncio.to_thread(self._require, "magvit")
        try:
            codes = await asyncio.to_thread(self.codecs.encode_image, data, side)
        except ValueError as exc:  # MediaError: corrupt, truncated, a bomb
            raise BadField("image", f"cannot read the image: {exc}") from exc
        seed = options["seed"]
        requests = [
            image_editing_request(
                self.tokenizer,
                options["prompt"],
                codes,
                seed=None if seed is None else seed + i,
                steps=options["steps"],
                guidance_scale=options["guidance_scale"],
                temperature=options["temperature"],
                num_previews=options["partial_images"],
            )
            for i in range(options["n"])
        ]
        size = f"{side}x{side}"
        if options["stream"]:
            return self._stream_image(requests[0], options, size, "image_edit")
        return await self._finish_images(requests, options, size)

    async def _stream_image(
        self, request: Any, options: dict[str, Any], size: str, kind: str
    ) -> AsyncIterator[str]:
        """Server-sent events of one image: ``<kind>.partial_image`` for each
        canvas preview, then ``<kind>.completed`` with the image and usage.

        The engine previews the canvas's prediction at evenly spaced steps
        (``num_previews``); a short schedule sends fewer partial images, as
        OpenAI allows. A client that disconnects aborts the request.
        """
        from vllm.sampling_params import RequestOutputKind

        from dynin_vllm.engine.previews import previews_of

        output_format = options["output_format"]
        params = request.sampling_params.clone()
        params.output_kind = RequestOutputKind.DELTA
        common = {
            "background": "opaque",
            "output_format": output_format,
            "quality": "auto",
            "size": size,
        }
        tokens: list[int] = []
        partial_index = 0
        try:
            async for output in self.engine.generate(
                request.prompt, params, f"img-{uuid.uuid4().hex}"
            ):
                completion = output.outputs[0]
                if completion.finish_reason == "error":
                    raise RuntimeError("the engine failed the request")
                # Every preview so far: outputs this loop was too slow to take
                # arrive merged, and the partial images still all go out.
                for preview in previews_of(output)[partial_index:]:
                    b64 = await self._encode_image(request, preview, output_format)
                    yield _sse(
                        f"{kind}.partial_image",
                        {
                            **common,
                            "type": f"{kind}.partial_image",
                            "b64_json": b64,
                            "created_at": int(time.time()),
                            "partial_image_index": partial_index,
                        },
                    )
                    partial_index += 1
                tokens += completion.token_ids
            b64 = await self._encode_image(request, tokens, output_format)
            yield _sse(
                f"{kind}.completed",
                {
                    **common,
                    "type": f"{kind}.completed",
                    "b64_json": b64,
                    "created_at": int(time.time()),
                    "usage": _usage(
                        output.prompt_token_ids, len(tokens), self.image_ids
                    ),
                },
            )
        except Exception as exc:  # the stream has started: report in band
            logger.exception("Streaming image request failed")
            yield _sse(
                "error",
                {"error": {"message": str(exc), "type": "InternalServerError"}},
            )

    async def _encode_image(
        self, request: Any, token_ids: list[int], output_format: str
    ) -> str:
        codes = image_codes(request, token_ids, self.tokenizer)
        (pixels,) = await self.image_decoder.decode([codes], request.grid)
        return await asyncio.to_thread(image_b64, pixels, output_format)

    async def _finish_images(
        self, requests: list, options: dict[str, Any], size: str
    ) -> dict:
        """Run the requests, decode their images, and answer as OpenAI does."""
        output_format = options["output_format"]
        base = f"img-{uuid.uuid4().hex}"
        outputs = await asyncio.gather(
            *(self._run(r, f"{base}-{i}") for i, r in enumerate(requests))
        )
        codes = [
            image_codes(r, o.outputs[0].token_ids, self.tokenizer)
            for r, o in zip(requests, outputs, strict=True)
        ]
        pixels = await self.image_decoder.decode(codes, requests[0].grid)
        data = [
            {"b64_json": await asyncio.to_thread(image_b64, p, output_format)}
            for p in pixels
        ]
        output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {
            "created": int(time.time()),
            "data": data,
            "output_format": output_format,
            "size": size,
            "usage": _usage(outputs[0].prompt_token_ids, output_tokens, self.image_ids),
        }

    def _require(self, which: str) -> None:
        """Load a codec now, or fail the request saying what to download."""
        try:
            self.codecs.magvit() if which == "magvit" else self.codecs.emova()
        except loading.CheckpointError as exc:
            raise BadField("model", str(exc)) from exc

    async def speech(self, body: dict) -> tuple[bytes, str]:
        text = _text(body, "input", required=True, limit=MAX_SPEECH_INPUT)
        condition = voice_condition(body.get("voice"))
        fmt = _choice(body, "response_format", "wav", AUDIO_FORMATS)
        speed = _number(body, "speed", 1.0, 0.25, 4.0)
        if body.get("stream_format") not in (None, "audio"):
            raise BadField("stream_format", "only 'audio' (the whole file) is served")
        seed = _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
        slots = _number(
            body, "max_new_tokens", SPEECH_SLOTS, 1, self.max_model_len, integer=True
        )
        request = speech_generation_request(
            self.tokenizer,
            text,
            num_slots=slots,
            steps=_number(body, "num_inference_steps", None, 1, MAX_STEPS, True),
            guidance_scale=_number(body, "guidance_scale", None, 0, MAX_GUIDANCE),
            temperature=_number(body, "temperature", 1.0, 0, MAX_TEMPERATURE),
            seed=seed,
        )
        room = self.max_model_len - len(request.prompt["prompt_token_ids"])
        if slots > room:
            raise BadField(
                "max_new_tokens" if "max_new_tokens" in body else "input",
                f"the text and {slots} speech slots need "
                f"{len(request.prompt['prompt_token_ids']) + slots} tokens; the "
                f"model's context holds {self.max_model_len}",
            )
        await asyncio.to_thread(self._require, "emova")
        output = await self._run(request, f"speech-{uuid.uuid4().hex}")
        units = speech_units(output.outputs[0].token_ids, self.tokenizer)
        ((wave, rate),) = await self.speech_decoder.decode(
            [SpeechJob(units, condition, speed, seed)]
        )
        payload = await asyncio.to_thread(audio_bytes, wave, rate, fmt)
        return payload, AUDIO_MEDIA_TYPES[fmt]


def _usage(prompt: Any, output_tokens: int, image_ids: range) -> dict[str, Any]:
    """OpenAI's image usage; a source image's codes are its image tokens."""
    prompt = list(prompt or ())
    images = sum(1 for t in prompt if t in image_ids)
    return {
        "input_tokens": len(prompt),
        "input_tokens_details": {
            "text_tokens": len(prompt) - images,
            "image_tokens": images,
        },
        "output_tokens": output_tokens,
        "total_tokens": len(prompt) + output_tokens,
    }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _flag(body: dict, name: str) -> bool:
    """A boolean field (multipart sends ``"true"``/``"false"`` as text)."""
    value = body.get(name)
    if value in (None, False, "false", "False", 0):
        return False
    if value in (True, "true", "True", 1):
        return True
    raise BadField(name, f"'{name}' must be true or false, got {value!r}")


def _form_value(value: Any) -> Any:
    """A multipart text field as JSON would carry it (numbers as numbers)."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


async def _upload_bytes(upload: Any) -> bytes:
    if isinstance(upload, str):
        raise BadField("image", "'image' must be a file upload")
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if not data:
        raise BadField("image", "the uploaded image is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadField(
            "image", f"the uploaded image is larger than {MAX_UPLOAD_BYTES} bytes"
        )
    return data


router = APIRouter()


def _serving(raw: Request) -> MediaServing | None:
    return getattr(raw.app.state, "dynin_media", None)


async def _json_body(raw: Request) -> dict:
    try:
        body = await raw.json()
    except ValueError as exc:
        raise BadField("body", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadField("body", "the body must be a JSON object")
    return body


async def _handle(raw: Request, work) -> Response:
    serving = _serving(raw)
    if serving is None:
        return _error("this endpoint serves Dynin-Omni checkpoints only", None, 404)
    try:
        return await work(serving, await _json_body(raw))
    except BadField as exc:
        return _error(str(exc), exc.param, exc.status)
    except ValueError as exc:  # vLLM's validation of the built request
        return _error(str(exc), getattr(exc, "parameter", None), 400)


def _images_response(result: Any) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream")


@router.post("/v1/images/generations")
async def create_images(raw: Request) -> Response:
    async def work(serving: MediaServing, body: dict) -> Response:
        return _images_response(await serving.images(body))

    return await _handle(raw, work)


@router.post("/v1/images/edits")
async def edit_images(raw: Request) -> Response:
    serving = _serving(raw)
    if serving is None:
        return _error("this endpoint serves Dynin-Omni checkpoints only", None, 404)
    try:
        form = await raw.form()
        return _images_response(await serving.edits(form))
    except BadField as exc:
        return _error(str(exc), exc.param, exc.status)
    except ValueError as exc:
        return _error(str(exc), getattr(exc, "parameter", None), 400)


@router.post("/v1/audio/speech")
async def create_speech(raw: Request) -> Response:
    async def work(serving: MediaServing, body: dict) -> Response:
        payload, media_type = await serving.speech(body)
        return Response(content=payload, media_type=media_type)

    return await _handle(raw, work)


class MediaEndpoints:
    """vLLM endpoint plugin (``EndpointPlugin`` protocol) of these routes."""

    name = "dynin-media"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.dynin_media = None
        if engine_client is None:
            return
        architectures = (
            getattr(engine_client.model_config.hf_config, "architectures", None) or ()
        )
        if any(a in ARCHITECTURES for a in architectures):
            state.dynin_media = MediaServing(engine_client)


__all__ = [
    "OPENAI_VOICES",
    "Codecs",
    "MediaEndpoints",
    "MediaServing",
    "SpeechJob",
    "voice_condition",
]
