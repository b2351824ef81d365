"""Serve a checkpoint with ``vllm serve`` and print a ready-to-paste request.

    python -m dynin_vllm.demo.serve [MODEL] [--port 8000] [-- extra vllm args]

With no MODEL it serves the embedded tiny Dynin-Omni checkpoint (real layout,
random weights; built on first use under ``checkpoints/``), which stands in
for ``snu-aidas/Dynin-Omni`` where weights cannot be downloaded. It waits for
the server to be ready, prints example requests, sends them (text, an image
chat, an audio chat and a transcription of a generated sample clip, an image
generation, an edit of that image and a speech synthesis, whose PNGs and WAV
it saves) to show the answers, and keeps serving until interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from dynin_vllm.serving.launch import serve_command, served

DEFAULT_CHECKPOINT = Path("checkpoints") / "dynin-omni-tiny"


def ensure_tiny_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> Path:
    """Build the tiny Dynin-Omni checkpoint at ``path`` unless it is there."""
    # (Re)built when incomplete, e.g. from before it shipped its codecs.
    parts = ("model.safetensors.index.json", "magvitv2", "emova_speech_tokenizer")
    if not all((path / name).exists() for name in parts):
        from dynin_vllm.testing.make_checkpoint import make_checkpoint

        print(f"Building the tiny Dynin-Omni checkpoint in {path} ...", flush=True)
        make_checkpoint(path, "dynin")
    return path


#: The example completion request (``model`` is filled in).
EXAMPLE_COMPLETION = {
    "prompt": "The capital of France is",
    "max_tokens": 32,
    "temperature": 0,
    "vllm_xargs": {"block_length": 16, "steps": 16},
}
EXAMPLE_CHAT = {
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 32,
    "temperature": 0,
}


def _example_image_url() -> str:
    """A small PNG (a colour gradient) as a data URL."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


#: Image understanding: a chat turn with an image part.
EXAMPLE_IMAGE_CHAT = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _example_image_url()}},
                {"type": "text", "text": "What is in this image?"},
            ],
        }
    ],
    "max_tokens": 16,
    "temperature": 0,
}


def sample_speech_file(directory: Path) -> Path:
    """A 2 s speech-like WAV clip (written once) for the audio examples."""
    from dynin_vllm.testing.media_samples import audio_bytes, speech_like

    path = directory / "sample_speech.wav"
    if not path.exists():
        path.write_bytes(audio_bytes(speech_like(1)))
    return path


def audio_chat(clip: Path) -> dict:
    """Speech recognition in chat: an ``input_audio`` part and the instruction."""
    import base64

    data = base64.b64encode(clip.read_bytes()).decode()
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": data, "format": "wav"},
                    },
                    {"type": "text", "text": "Transcribe the given audio."},
                ],
            }
        ],
        "max_tokens": 16,
        "temperature": 0,
    }


#: Image generation and speech synthesis, small enough for a short context.
EXAMPLE_IMAGE_GENERATION = {
    "prompt": "a red cube on a blue sphere",
    "size": "256x256",
    "seed": 0,
}
#: Image editing (multipart), of the generated image.
EXAMPLE_IMAGE_EDIT = {
    "prompt": "make the sphere green",
    "size": "128x128",
    "num_inference_steps": 16,
    "seed": 0,
}
EXAMPLE_SPEECH = {
    "input": "Hello from Dynin-Omni.",
    "voice": "alloy",
    "response_format": "wav",
    "max_new_tokens": 64,
    "seed": 0,
}


def example_requests(base: str, model: str, clip: Path | None = None) -> str:
    """Ready-to-paste ``curl`` commands for the completion, chat and (with a
    sample ``clip``) transcription endpoints."""
    lines = []
    for path, body in (
        ("completions", EXAMPLE_COMPLETION),
        ("chat/completions", EXAMPLE_CHAT),
        ("chat/completions", EXAMPLE_IMAGE_CHAT),
    ):
        payload = json.dumps({"model": model, **body})
        lines.append(
            f"curl -s {base}/v1/{path} -H 'Content-Type: application/json' "
            f"-d '{payload}'"
        )
    if clip is not None:
        lines.append(
            f"curl -s {base}/v1/audio/transcriptions -F model={model} "
            f"-F file=@{clip} -F temperature=0 -F max_completion_tokens=16"
        )
    save_image = (
        ' | python -c \'import base64,json,sys; open("{}","wb")'
        '.write(base64.b64decode(json.load(sys.stdin)["data"][0]["b64_json"]))\''
    )
    fields = " ".join(f"-F {k}={v!r}" for k, v in EXAMPLE_IMAGE_EDIT.items())
    for path, body, tail in (
        (
            "images/generations",
            EXAMPLE_IMAGE_GENERATION,
            save_image.format("image.png"),
        ),
        ("audio/speech", EXAMPLE_SPEECH, " -o speech.wav"),
    ):
        payload = json.dumps({"model": model, **body})
        lines.append(
            f"curl -s {base}/v1/{path} -H 'Content-Type: application/json' "
            f"-d '{payload}'{tail}"
        )
    lines.append(
        f"curl -s {base}/v1/images/edits -F model={model} -F image=@image.png "
        f"{fields}{save_image.format('edited_image.png')}"
    )
    return "\n\n".join(lines)


def _post(base: str, path: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/v1/{path}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def send_example(base: str, model: str) -> str:
    """Send the example completion; return its text."""
    body = {"model": model, **EXAMPLE_COMPLETION}
    return _post(base, "completions", body)["choices"][0]["text"]


def send_image_example(base: str, model: str) -> str:
    """Send the image-understanding chat example; return its answer."""
    body = {"model": model, **EXAMPLE_IMAGE_CHAT}
    return _post(base, "chat/completions", body)["choices"][0]["message"]["content"]


def send_audio_examples(base: str, model: str, clip: Path) -> tuple[str, str]:
    """Send the audio chat and the transcription of ``clip``; return both
    answers."""
    from openai import OpenAI

    body = {"model": model, **audio_chat(clip)}
    chat = _post(base, "chat/completions", body)["choices"][0]["message"]["content"]
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    transcript = client.audio.transcriptions.create(
        model=model,
        file=(clip.name, clip.read_bytes()),
        temperature=0,
        extra_body={"max_completion_tokens": 16},
    ).text
    return chat, transcript


def send_generation_examples(base: str, model: str, directory: Path) -> list[Path]:
    """Generate the example image, edit it, synthesize the example speech;
    save the three files in ``directory``."""
    import base64

    body = {"model": model, **EXAMPLE_IMAGE_GENERATION}
    image = _post(base, "images/generations", body)["data"][0]["b64_json"]
    image_path = directory / "generated_image.png"
    image_path.write_bytes(base64.b64decode(image))
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    options = dict(EXAMPLE_IMAGE_EDIT)
    edited = client.images.edit(
        model=model,
        image=(image_path.name, image_path.read_bytes(), "image/png"),
        prompt=options.pop("prompt"),
        size=options.pop("size"),
        extra_body=options,
        timeout=300,
    )
    edit_path = directory / "edited_image.png"
    edit_path.write_bytes(base64.b64decode(edited.data[0].b64_json))
    request = urllib.request.Request(
        f"{base}/v1/audio/speech",
        json.dumps({"model": model, **EXAMPLE_SPEECH}).encode(),
        {"Content-Type": "application/json"},
    )
    speech_path = directory / "generated_speech.wav"
    with urllib.request.urlopen(request, timeout=300) as resp:
        speech_path.write_bytes(resp.read())
    return [image_path, edit_path, speech_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="checkpoint dir or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--once", action="store_true", help="exit after the example request"
    )
    args, extra = parser.parse_known_args(argv)
    model = args.model or str(ensure_tiny_checkpoint())
    command = serve_command(model, args.host, args.port, extra)
    print("Starting:", " ".join(command), flush=True)
    try:
        with served(model, host=args.host, port=args.port, extra_args=extra) as server:
            base = server.base_url
            clip = sample_speech_file(_sample_directory(model))
            print("\nServer ready. Example requests:\n", flush=True)
            print(example_requests(base, model, clip), flush=True)
            print(f"\nExample completion: {send_example(base, model)!r}", flush=True)
            answer = send_image_example(base, model)
            print(f"Example image chat: {answer!r}", flush=True)
            chat, transcript = send_audio_examples(base, model, clip)
            print(f"Example audio chat: {chat!r}", flush=True)
            print(f"Example transcription: {transcript!r}", flush=True)
            image, edited, speech = send_generation_examples(
                base, model, _sample_directory(model)
            )
            print(f"Example image generation: saved {image}", flush=True)
            print(f"Example image edit: saved {edited}", flush=True)
            print(f"Example speech synthesis: saved {speech}\n", flush=True)
            if args.once:
                return 0
            print("Serving; press Ctrl-C to stop.", flush=True)
            return server.process.wait()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _sample_directory(model: str) -> Path:
    """Where the sample clip goes: beside a local checkpoint, else here."""
    path = Path(model)
    return path.parent if path.is_dir() else Path(".")


if __name__ == "__main__":
    sys.exit(main())
