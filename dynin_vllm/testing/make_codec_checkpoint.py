"""Write tiny random-weight media-codec checkpoints in the real file layout.

    python -m dynin_vllm.testing.make_codec_checkpoint OUT --codec magvit2 \\
        [--set ch=64] [--seed 0]
    python -m dynin_vllm.testing.make_codec_checkpoint OUT --codec emova \\
        [--set s2u.n_mels=64 --set u2s.hidden_channels=32] [--seed 0] [--full-size]

* ``magvit2``: ``config.json`` (the real file's bookkeeping fields plus the size
  overrides) and ``pytorch_model.safetensors`` with the real tensor names,
  including the ``quantize.embedding`` / ``quantize.power_vals`` buffers.
* ``emova``: ``config.json`` (the HF wrapper's fields -- unit types, style table
  size and ``u2s_style2idx`` -- plus ``s2u_overrides`` / ``u2s_overrides``) and
  ``model.safetensors`` with every inference tensor under its real name, the
  stored feature-extractor buffers, and a representative set of the
  training-only tensors the loader must skip.

Sizes are small unless ``--full-size`` is given; every tensor is drawn from a
generator seeded with ``--seed``, so the same arguments give the same tensors.
The builders are importable: :func:`make_magvit2_checkpoint`,
:func:`make_emova_checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dynin_vllm.multimodal.emova import (
    S2U_UNIT_TYPE,
    STYLE_CONDITIONS,
    U2S_UNIT_TYPE,
    EmovaConfig,
    EmovaSpeechTokenizer,
)
from dynin_vllm.multimodal.magvit2 import MAGVIT_WEIGHTS_NAME, MagvitV2

#: Small MAGVIT-v2: 32 base channels (GroupNorm needs multiples of 32), one
#: block per level; still five levels (16x) and 13 LFQ bits (8,192 codes).
TINY_MAGVIT2: dict[str, Any] = {
    "ch": 32,
    "enc_ch_mult": [1, 1, 2, 2, 2],
    "enc_num_res_blocks": [1, 1, 1, 1, 1],
    "dec_ch_mult": [1, 1, 2, 2, 2],
    "dec_num_res_blocks": [1, 1, 1, 1, 1],
}
#: Small SPIRAL encoder (same block structure, 40 ms units, FSQ 8x8x8x8).
TINY_S2U: dict[str, Any] = {
    "n_mels": 32,
    "block1_channels": [32, 48, 48],
    "block1_layers": 1,
    "block1_heads": 2,
    "block1_ffn": 96,
    "block2_channels": [64, 64],
    "block2_layers": 1,
    "block2_heads": 2,
    "block2_ffn": 128,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
}
#: Small Unit-VITS (real symbol table, hop 256, 22,050 Hz).
TINY_U2S: dict[str, Any] = {
    "inter_channels": 16,
    "hidden_channels": 16,
    "filter_channels": 32,
    "n_layers": 1,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "upsample_initial_channel": 32,
    "gin_channels": 16,
}

_EMOVA_WEIGHTS_NAME = "model.safetensors"
_SMALL = (".bias", ".BETA", ".m", ".logs")


def _random_state(
    model: nn.Module, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Seeded values for every parameter; buffers keep their constructed values."""
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name not in params:
            state[name] = tensor.detach().clone().contiguous()
            continue
        shape = tuple(tensor.shape)
        noise = torch.randn(shape, generator=generator)
        if name.endswith(_SMALL):
            value = 0.1 * noise
        elif name.endswith("weight_g"):
            value = None  # set from weight_v below
        elif len(shape) == 1:  # norm gains
            value = 1.0 + 0.1 * noise
        else:
            value = noise / math.sqrt(max(1, math.prod(shape[1:])))
        if value is not None:
            state[name] = value
    for name in list(params):
        if name.endswith("weight_g"):
            v = state[name[: -len("weight_g")] + "weight_v"]
            module = model.get_submodule(name.rsplit(".", 1)[0])
            dims = [d for d in range(v.dim()) if d != module.wn_dim]
            state[name] = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    return {k: state[k] for k in model.state_dict()}


def _write(
    directory: Path,
    config: Mapping[str, Any],
    tensors: dict[str, torch.Tensor],
    weights: str,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / weights))
    return directory


def make_magvit2_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    full_size: bool = False,
) -> Path:
    """Write a MAGVIT-v2 checkpoint (tiny unless ``full_size``) to ``out_dir``."""
    sizes = {} if full_size else dict(TINY_MAGVIT2)
    sizes.update(overrides or {})
    with torch.random.fork_rng():
        model = MagvitV2.from_config(sizes)
    tensors = _random_state(model, torch.Generator().manual_seed(seed))
    config = {"_class_name": "MAGVITv2", "_diffusers_version": "0.24.0", **sizes}
    return _write(Path(out_dir), config, tensors, MAGVIT_WEIGHTS_NAME)


def _training_only_tensors(
    config: EmovaConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A representative tensor for each training-only entry the loader skips."""
    hidden, gin = config.u2s.hidden_channels, config.u2s.gin_channels
    levels = len(config.s2u.fsq_levels)
    spec = 513  # linear-spectrogram bins (filter_length 1024 // 2 + 1)
    shapes = {
        "encoder.encoder.mask_emb": (config.s2u.n_mels,),
        "encoder.decoder.conv_layers.0.conv.conv.weight": (8, levels, 5),
        "encoder.decoder.conv_layers.0.conv.conv.bias": (8,),
        "encoder.decoder.decoder_layers.0.weight": (241, 8, 1),
        "encoder.decoder.decoder_layers.0.bias": (241,),
        "decoder.enc_q.pre.weight": (hidden, spec, 1),
        "decoder.enc_q.pre.bias": (hidden,),
        "decoder.enc_q.enc.in_layers.0.weight_g": (2 * hidden, 1, 1),
        "decoder.enc_q.enc.in_layers.0.weight_v": (2 * hidden, hidden, 5),
        "decoder.enc_q.proj.weight": (2 * config.u2s.inter_channels, hidden, 1),
        "decoder.enc_r.spectral.0.fc.weight": (hidden, spec),
        "decoder.enc_r.fc.fc.weight": (gin, hidden),
        "decoder.emb_g.weight": (1344, gin),
        "decoder.dp.post_pre.weight": (hidden, 1, 1),
        "decoder.dp.post_proj.weight": (hidden, hidden, 1),
        "decoder.dp.post_convs.convs_sep.0.weight": (hidden, 1, 3),
        "decoder.dp.post_convs.norms_1.0.GAMMA": (hidden,),
        "decoder.dp.post_flows.0.m": (2, 1),
        "decoder.dp.post_flows.1.proj.weight": (29, hidden, 1),
        "decoder.dp.flows.1.pre.weight": (hidden, 1, 1),
        "decoder.dp.flows.1.proj.weight": (29, hidden, 1),
    }
    return {k: 0.1 * torch.randn(s, generator=generator) for k, s in shapes.items()}


def make_emova_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    s2u_overrides: Mapping[str, Any] | None = None,
    u2s_overrides: Mapping[str, Any] | None = None,
    full_size: bool = False,
    include_training_only: bool = True,
) -> Path:
    """Write an EMOVA speech-tokenizer checkpoint (tiny unless ``full_size``)."""
    s2u = {} if full_size else dict(TINY_S2U)
    s2u.update(s2u_overrides or {})
    u2s = {} if full_size else dict(TINY_U2S)
    u2s.update(u2s_overrides or {})
    config = {
        "architectures": ["EMOVASpeechTokenizer"],
        "model_type": "emova_speech_tokenizer",
        "s2u_unit_type": S2U_UNIT_TYPE,
        "u2s_unit_type": U2S_UNIT_TYPE,
        "u2s_num_styles": len(STYLE_CONDITIONS),
        "u2s_dim_styles": u2s.get("gin_channels", 256),
        "u2s_style2idx": {c: i for i, c in enumerate(STYLE_CONDITIONS)},
        "torch_dtype": "float32",
    }
    if s2u:
        config["s2u_overrides"] = s2u
    if u2s:
        config["u2s_overrides"] = u2s
    parsed = EmovaConfig.from_dict(config)
    with torch.random.fork_rng():
        model = EmovaSpeechTokenizer(parsed)
    generator = torch.Generator().manual_seed(seed)
    tensors = _random_state(model, generator)
    if include_training_only:
        tensors.update(_training_only_tensors(parsed, generator))
    return _write(Path(out_dir), config, tensors, _EMOVA_WEIGHTS_NAME)


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--codec", choices=("magvit2", "emova"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="size override (JSON value); EMOVA keys are prefixed s2u. or u2s.",
    )
    parser.add_argument("--full-size", action="store_true", help="real sizes (large)")
    args = parser.parse_args(argv)
    sets = _parse_sets(args.set)
    if args.codec == "magvit2":
        path = make_magvit2_checkpoint(
            args.out, seed=args.seed, overrides=sets, full_size=args.full_size
        )
    else:
        groups: dict[str, dict[str, Any]] = {"s2u": {}, "u2s": {}}
        for key, value in sets.items():
            prefix, _, name = key.partition(".")
            if prefix not in groups or not name:
                raise SystemExit(f"EMOVA overrides are s2u.KEY or u2s.KEY, got {key!r}")
            groups[prefix][name] = value
        path = make_emova_checkpoint(
            args.out,
            seed=args.seed,
            s2u_overrides=groups["s2u"],
            u2s_overrides=groups["u2s"],
            full_size=args.full_size,
        )
    print(path)


if __name__ == "__main__":
    main()
