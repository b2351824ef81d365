"""GPU media encoders: MAGVIT-v2 and EMOVA S2U in bf16 and float32.

    python benchmarks/gpu_encoders.py --out benchmarks/results/encoders_<card>.json
    python benchmarks/gpu_encoders.py --dry-run     # tiny shapes on CPU

Plain torch, no vLLM. Random weights of the real shapes (``snu-aidas/magvitv2``:
364 MiB; EMOVA S2U ``40ms_multilingual_8888``). For each encoder and each
precision (float32; bf16 under autocast, as the STFT front end stays float32)
it times, after a warm-up, the median of 10 runs with the device synchronized:

- MAGVIT-v2: one 336 px image at batch 1, 8 and 32, and one video (5 frames
  of 224 px), in ms per item;
- S2U: a 10 s clip at batch 1 and 8, in ms per second of audio;

and the share of codes/units that bf16 leaves equal to float32 (random
weights, so only a rough sign of the precision's effect).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run, device: torch.device, repeats: int) -> float:
    run()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def magvit(device: torch.device, dry_run: bool, repeats: int) -> dict:
    from dynin_vllm.multimodal.magvit2 import MagvitV2
    from dynin_vllm.testing.make_codec_checkpoint import TINY_MAGVIT2

    sizes = dict(TINY_MAGVIT2) if dry_run else {}
    model = MagvitV2(**sizes).to(device).eval()
    resolution, frame = (64, 32) if dry_run else (336, 224)
    report: dict = {}
    reference = None
    for name, dtype in (("float32", None), ("bf16_autocast", torch.bfloat16)):
        rows = {}
        for batch in (1, 8) if dry_run else (1, 8, 32):
            pixels = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
            with torch.no_grad(), _autocast(device, dtype):
                ms = _median_ms(lambda p=pixels: model.encode(p), device, repeats)
            rows[f"ms_per_image_batch_{batch}"] = ms / batch
        video = torch.rand(5, 3, frame, frame, device=device) * 2 - 1
        with torch.no_grad(), _autocast(device, dtype):
            rows["ms_per_video_5_frames"] = _median_ms(
                lambda v=video: model.encode(v), device, repeats
            )
        torch.manual_seed(0)
        probe = torch.rand(4, 3, resolution, resolution, device=device) * 2 - 1
        with torch.no_grad(), _autocast(device, dtype):
            codes = model.encode(probe)
        if reference is None:
            reference = codes
        rows["codes_equal_to_float32"] = float((codes == reference).float().mean())
        report[name] = rows
    return report


def s2u(device: torch.device, dry_run: bool, repeats: int) -> dict:
    from dynin_vllm.multimodal.emova_s2u import S2UModel, SpiralConfig
    from dynin_vllm.testing.make_codec_checkpoint import TINY_S2U
    from dynin_vllm.testing.media_samples import speech_like

    config = SpiralConfig.from_overrides(TINY_S2U if dry_run else None)
    model = S2UModel(config).to(device).eval()
    seconds = 2.0 if dry_run else 10.0
    clips = [speech_like(seed, seconds) for seed in range(8)]
    report: dict = {}
    reference = None
    for name, dtype in (("float32", None), ("bf16_autocast", torch.bfloat16)):
        rows = {}
        for batch in (1, 8):
            wavs = torch.stack([torch.from_numpy(c) for c in clips[:batch]]).to(device)
            lengths = torch.full((batch,), wavs.shape[1], device=device)
            with torch.no_grad(), _autocast(device, dtype):
                ms = _median_ms(lambda w=wavs, n=lengths: model(w, n), device, repeats)
                units, _ = model(wavs, lengths)
            rows[f"ms_per_second_batch_{batch}"] = ms / (batch * seconds)
            if batch == 8:
                if reference is None:
                    reference = units
                rows["units_equal_to_float32"] = float(
                    (units == reference).float().mean()
                )
        report[name] = rows
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    repeats = 2 if args.dry_run else 10
    report = {
        "device": "cpu (dry run)"
        if args.dry_run
        else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "magvit2": magvit(device, args.dry_run, repeats),
        "s2u": s2u(device, args.dry_run, repeats),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
