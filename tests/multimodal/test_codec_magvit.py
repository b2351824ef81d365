"""MAGVIT-v2 through the production loader: image/video -> codes -> image,
pre/post-processing, strict loading and checkpoint resolution."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dynin_vllm.multimodal import loading
from dynin_vllm.multimodal.image_tokenizer import ImageTokenizer, load_magvit2
from dynin_vllm.multimodal.magvit2 import MAGVIT_WEIGHTS_NAME, MagvitV2
from dynin_vllm.multimodal.media import (
    MediaError,
    load_image,
    load_video_frames,
    postprocess_images,
    preprocess_image,
    sample_frame_indices,
)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# round trips


def test_image_round_trip(image_tokenizer: ImageTokenizer) -> None:
    images = [_image(100, 80, 0), _image(64, 64, 1)]
    codes = image_tokenizer.encode(images)
    assert codes.shape == (2, 16)  # 64 x 64 -> 4 x 4 grid
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 8192
    out = image_tokenizer.decode(codes)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    # Decoding is batch-independent (up to float rounding before truncation).
    single = image_tokenizer.decode(codes[1:])
    assert np.abs(single[0].astype(int) - out[1].astype(int)).max() <= 1


def test_codes_depend_on_the_image(image_tokenizer: ImageTokenizer) -> None:
    a = image_tokenizer.encode(_image(64, 64, 2))
    b = image_tokenizer.encode(_image(64, 64, 3))
    assert not torch.equal(a, b)
    assert torch.equal(a, image_tokenizer.encode(_image(64, 64, 2)))


def test_non_square_grid(image_tokenizer: ImageTokenizer) -> None:
    pixels = torch.rand(2, 3, 48, 80) * 2 - 1
    codes, grid = image_tokenizer.encode_pixels(pixels)
    assert grid == (3, 5) and codes.shape == (2, 15)
    out = image_tokenizer.decode(codes, grid)
    assert out.shape == (2, 48, 80, 3)
    with pytest.raises(ValueError, match=r"square"):
        image_tokenizer.decode(codes)
    with pytest.raises(ValueError, match=r"grid"):
        image_tokenizer.decode(codes, (4, 4))


def test_resolution_336_gives_441_codes(image_tokenizer: ImageTokenizer) -> None:
    codes = image_tokenizer.encode(_image(400, 360), resolution=336)
    assert codes.shape == (1, 441)
    assert image_tokenizer.grid_size(512) == (32, 32)
    assert MagvitV2.grid_size(512, 512)[0] * MagvitV2.grid_size(512, 512)[1] == 1024


def test_bad_sizes_and_codes(image_tokenizer: ImageTokenizer) -> None:
    with pytest.raises(ValueError, match=r"multiple of 16"):
        image_tokenizer.model.encode(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"\[0, 8192\)"):
        image_tokenizer.decode(torch.tensor([[8192] * 16]))


# pre/post-processing


def test_preprocess_resizes_shorter_side_and_centre_crops() -> None:
    # 100 x 60 (w x h) image: left half black, right half white.
    array = np.zeros((60, 100, 3), dtype=np.uint8)
    array[:, 50:] = 255
    image = Image.fromarray(array)
    out = preprocess_image(image, 48)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    resized = image.resize(
        (80, 48), Image.Resampling.BICUBIC
    )  # int(48 * 100 / 60) = 80
    expected = np.asarray(resized.crop((16, 0, 64, 48)), dtype=np.float32) / 255.0
    expected = (torch.from_numpy(expected).permute(2, 0, 1) - 0.5) / 0.5
    assert torch.equal(out, expected)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_preprocess_constant_value_and_squash() -> None:
    image = Image.new("RGB", (30, 70), (0, 51, 255))
    out = preprocess_image(image, 32, mode="squash")
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[:, 0, 0], torch.tensor([-1.0, 51 / 255 * 2 - 1, 1.0]))
    with pytest.raises(ValueError, match=r"mode"):
        preprocess_image(image, 32, mode="stretch")
    with pytest.raises(ValueError, match=r"multiple of 16"):
        preprocess_image(image, 30)


def test_preprocess_accepts_rgba_grey_arrays_and_bytes() -> None:
    rgba = Image.new("RGBA", (20, 20), (10, 20, 30, 0))
    assert preprocess_image(rgba, 16).shape == (3, 16, 16)
    grey = np.full((20, 24), 128, dtype=np.uint8)
    assert preprocess_image(grey, 16).shape == (3, 16, 16)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert load_image(buf.getvalue()).mode == "RGB"


def test_postprocess_clamps_scales_and_truncates() -> None:
    pixels = (
        torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
        .view(1, 1, 1, 6)
        .expand(1, 3, 1, 6)
    )
    out = postprocess_images(pixels)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    # (x+1)/2*255: 0, 0, 127.5 -> 127, 254.87 -> 254, 255, 255
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


# media errors


def test_corrupt_and_missing_images(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(MediaError, match=r"broken.png"):
        load_image(bad)
    with pytest.raises(MediaError, match=r"missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    good = tmp_path / "cut.png"
    _image(64, 64).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(MediaError, match=r"truncated.png"):
        load_image(truncated)
    with pytest.raises(MediaError, match=r"request.image"):
        load_image(b"garbage", field="request.image")
    with pytest.raises(MediaError, match=r"array"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    assert issubclass(MediaError, ValueError)


# video


def _write_video(path: Path, colours: list[tuple[int, int, int]]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    assert writer.isOpened()
    for colour in colours:
        writer.write(np.full((32, 32, 3), colour[::-1], dtype=np.uint8))  # RGB -> BGR
    writer.release()


COLOURS = [
    (0, 0, 0),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 255, 255),
]


def test_video_uniform_sampling(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, COLOURS)
    assert sample_frame_indices(7, 5).tolist() == [0, 1, 3, 4, 6]
    frames = load_video_frames(path, 5)
    assert len(frames) == 5
    for frame, index in zip(frames, [0, 1, 3, 4, 6], strict=True):
        mean = np.asarray(frame, dtype=np.float32).mean(axis=(0, 1))
        assert np.allclose(mean, COLOURS[index], atol=12), (index, mean)
    from_bytes = load_video_frames(path.read_bytes(), 2)
    assert len(from_bytes) == 2


def test_video_codes(tmp_path: Path, image_tokenizer: ImageTokenizer) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, COLOURS)
    codes = image_tokenizer.encode_video(path, num_frames=3, resolution=32)
    assert codes.shape == (3, 4)
    frames = load_video_frames(path, 3)
    assert torch.equal(codes, image_tokenizer.encode(frames, resolution=32))


def test_video_errors(tmp_path: Path) -> None:
    path = tmp_path / "short.avi"
    _write_video(path, COLOURS[:3])
    with pytest.raises(MediaError, match=r"3 frames, 5 required"):
        load_video_frames(path, 5)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(MediaError, match=r"junk.mp4"):
        load_video_frames(junk)
    with pytest.raises(MediaError, match=r"nope.mp4"):
        load_video_frames(tmp_path / "nope.mp4")


# loading


def test_fixture_has_real_file_layout(magvit_dir: Path) -> None:
    assert (magvit_dir / MAGVIT_WEIGHTS_NAME).is_file()
    assert not (magvit_dir / "model.safetensors").exists()
    config = json.loads((magvit_dir / "config.json").read_text())
    assert config["ch"] == 32
    tensors = load_file(str(magvit_dir / MAGVIT_WEIGHTS_NAME))
    assert (
        "quantize.embedding" in tensors
        and "encoder.down.1.block.0.conv1.weight" in tensors
    )


def _copy_with(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / MAGVIT_WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(dst / MAGVIT_WEIGHTS_NAME))
    return dst


def test_strict_loading_names_the_bad_tensors(magvit_dir: Path, tmp_path: Path) -> None:
    key = "decoder.conv_out.weight"
    missing = _copy_with(magvit_dir, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(loading.CheckpointError, match=rf"missing tensors: {key}"):
        load_magvit2(missing)

    def add(t: dict) -> None:
        t["encoder.extra.weight"] = torch.zeros(2)

    unexpected = _copy_with(magvit_dir, tmp_path / "unexpected", add)
    with pytest.raises(
        loading.CheckpointError, match=r"unexpected tensors: encoder.extra.weight"
    ):
        load_magvit2(unexpected)

    def reshape(t: dict) -> None:
        t["encoder.conv_in.bias"] = torch.zeros(7)

    mis = _copy_with(magvit_dir, tmp_path / "mis", reshape)
    with pytest.raises(
        loading.CheckpointError, match=r"encoder.conv_in.bias \(file \[7\]"
    ):
        load_magvit2(mis)


def test_deterministic_buffers_may_be_absent(magvit_dir: Path, tmp_path: Path) -> None:
    def drop(t: dict) -> None:
        del t["quantize.embedding"], t["quantize.power_vals"]

    model = load_magvit2(_copy_with(magvit_dir, tmp_path / "nobuf", drop))
    reference = load_magvit2(magvit_dir)
    assert torch.equal(model.quantize.embedding, reference.quantize.embedding)
    assert torch.equal(model.decoder.conv_out.weight, reference.decoder.conv_out.weight)


def test_loaded_weights_equal_the_file(magvit_dir: Path) -> None:
    model = load_magvit2(magvit_dir)
    tensors = load_file(str(magvit_dir / MAGVIT_WEIGHTS_NAME))
    for name, value in model.state_dict().items():
        assert torch.equal(value, tensors[name].to(value.dtype)), name
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_path_resolution_env_and_hub(
    magvit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setenv(loading.MAGVIT_PATH_ENV, str(magvit_dir))
    assert load_magvit2().quantize.codebook_size == 8192

    calls: list[tuple] = []

    def fake_download(repo_id: str, revision=None, allow_patterns=None) -> str:
        calls.append((repo_id, revision))
        return str(magvit_dir)

    monkeypatch.delenv(loading.MAGVIT_PATH_ENV)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    load_magvit2()
    load_magvit2("someone/other-magvit", revision="abc")
    assert calls == [("snu-aidas/magvitv2", None), ("someone/other-magvit", "abc")]

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(loading.CheckpointError, match=loading.MAGVIT_PATH_ENV):
        load_magvit2()
    with pytest.raises(loading.CheckpointError, match=r"not a directory"):
        load_magvit2("/definitely/not/here")
