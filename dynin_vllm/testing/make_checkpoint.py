"""Write tiny random-weight checkpoints in the real LLaDA / MMaDA / Dynin layout.

    python -m dynin_vllm.testing.make_checkpoint OUT --preset {dynin,llada,mmada}

The directory holds what the real Hugging Face repository holds: a full
``config.json`` (every field, the real vocabulary size and special ids),
sharded ``model-0000k-of-0000n.safetensors`` files with
``model.safetensors.index.json``, ``generation_config.json`` and a tokenizer
with the special tokens at their real ids and the chat template. Only the
layer sizes are small. Tests and the demo load it through the production
loader, so the loader is what gets tested.

Weights are drawn from a seeded generator with scales chosen so that tiny
models still have confident, well-separated predictions (a model with
near-uniform logits would make confidence-ordered decoding numerically
fragile and hide attention effects).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dynin_vllm.configs import (
    DYNIN_EXTRA_FIELDS,
    IMAGE_MODEL_TYPES,
    LLADA_8B_FIELDS,
    MMADA_EXTRA_FIELDS,
    LLaDAConfig,
)
from dynin_vllm.model.layout import checkpoint_shapes
from dynin_vllm.multimodal.loading import EMOVA_SUBDIR, MAGVIT_SUBDIR
from dynin_vllm.testing.make_codec_checkpoint import (
    make_emova_checkpoint,
    make_magvit2_checkpoint,
)
from dynin_vllm.testing.tokenizer import save_tokenizer


@dataclass(frozen=True)
class Preset:
    """What distinguishes the three checkpoint families."""

    architecture: str
    model_type: str
    vocab_size: int
    tokenizer_length: int
    header_newlines: int
    extra_fields: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "llada": Preset("LLaDAModelLM", "llada", 126464, 126349, 2),
    "mmada": Preset(
        "MMadaModelLM",
        "mmada",
        134656,
        126349,
        1,
        {**MMADA_EXTRA_FIELDS, "new_vocab_size": 134656},
    ),
    "dynin": Preset(
        "DyninOmniModelLM",
        "dynin_omni",
        138752,
        126464,
        1,
        {**DYNIN_EXTRA_FIELDS, "new_vocab_size": 138752},
    ),
}

#: Tiny sizes. head_dim = 32 is the smallest vLLM's CPU attention accepts; the
#: context holds the longest generation layout (TTS: 1,409 tokens).
TINY_SIZES: dict[str, int] = {
    "d_model": 64,
    "n_heads": 2,
    "n_kv_heads": 2,
    "n_layers": 2,
    "mlp_hidden_size": 128,
    "max_sequence_length": 2048,
}


def build_config(
    preset: str, *, vocab_size: int | None = None, **sizes: int
) -> dict[str, Any]:
    """The full ``config.json`` dict for ``preset`` with tiny (or given) sizes.

    ``vocab_size`` replaces the real vocabulary (benchmarks only, to make the
    LM head negligible): the mask, EOS and BOS ids move to its top three ids.
    """
    spec = PRESETS[preset]
    cfg: dict[str, Any] = dict(LLADA_8B_FIELDS)
    cfg.update(spec.extra_fields)
    cfg.update(TINY_SIZES)
    cfg.update(sizes)
    cfg.update(
        {
            "architectures": [spec.architecture],
            "model_type": spec.model_type,
            "vocab_size": spec.vocab_size,
            "embedding_size": spec.vocab_size,
            "eos_token_id": 126081,
            "pad_token_id": 126081,
            "mask_token_id": 126336,
            "torch_dtype": "bfloat16",
            # The real LLaDA config.json was written by transformers 4.46.3.
            "transformers_version": "4.46.3",
        }
    )
    if vocab_size is not None:
        cfg.update(
            vocab_size=vocab_size,
            embedding_size=vocab_size,
            new_vocab_size=vocab_size,
            mask_token_id=vocab_size - 1,
            eos_token_id=vocab_size - 2,
            pad_token_id=vocab_size - 2,
            bos_token_id=vocab_size - 3,
        )
    cfg["mlp_ratio"] = max(1, cfg["mlp_hidden_size"] // cfg["d_model"])
    return cfg


def init_weights(config: LLaDAConfig, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights for every tensor of the layout."""
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in checkpoint_shapes(config).items():
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            tensor = 1.0 + 0.2 * (torch.rand(shape, generator=gen) - 0.5)
        elif name.endswith("wte.weight"):
            tensor = torch.randn(shape, generator=gen)
        elif name.endswith("transformer.ff_out.weight"):
            # LM head: logits with a standard deviation of about 3.
            tensor = torch.randn(shape, generator=gen) * (3.0 / math.sqrt(shape[1]))
        else:
            tensor = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        weights[name] = tensor.to(torch.bfloat16)
    return weights


def write_shards(
    weights: dict[str, torch.Tensor], out: Path, num_shards: int
) -> dict[str, str]:
    """Split ``weights`` over ``num_shards`` safetensors files plus their index."""
    names = list(weights)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    target = total / num_shards
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = weights[name].numel() * weights[name].element_size()
        if (
            shards[-1]
            and size + nbytes > target * len(shards)
            and len(shards) < num_shards
        ):
            shards.append([])
        shards[-1].append(name)
        size += nbytes
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        file_name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(
            {n: weights[n].contiguous() for n in shard},
            str(out / file_name),
            metadata={"format": "pt"},
        )
        weight_map.update({n: file_name for n in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return weight_map


def generation_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``generation_config.json``: the LLaDA special ids plus optional defaults."""
    cfg: dict[str, Any] = {
        "bos_token_id": 126080,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
    }
    cfg.update(overrides or {})
    return cfg


def make_checkpoint(
    out_dir: str | Path,
    preset: str = "dynin",
    *,
    seed: int = 0,
    num_shards: int = 2,
    generation_overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    **sizes: int,
) -> Path:
    """Write a tiny checkpoint for ``preset`` into ``out_dir`` and return it
    (``vocab_size``: see :func:`build_config`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = build_config(preset, vocab_size=vocab_size, **sizes)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    config = LLaDAConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    write_shards(init_weights(config, seed), out, num_shards)
    gen = generation_config(generation_overrides)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    spec = PRESETS[preset]
    save_tokenizer(out, spec.tokenizer_length, spec.header_newlines)
    if spec.model_type in IMAGE_MODEL_TYPES:
        # The codecs beside the model, where the engine looks for them.
        make_magvit2_checkpoint(out / MAGVIT_SUBDIR, seed=seed)
        make_emova_checkpoint(out / EMOVA_SUBDIR, seed=seed)
    return out


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="dynin")
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    parser.add_argument("--shards", type=int, default=2, help="safetensors files")
    for key, value in TINY_SIZES.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=int, default=value, dest=key
        )
    parser.add_argument(
        "--generation",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="extra generation_config.json entry (repeatable), e.g. block_length=32",
    )
    args = parser.parse_args(argv)
    sizes = {key: getattr(args, key) for key in TINY_SIZES}
    out = make_checkpoint(
        args.out,
        args.preset,
        seed=args.seed,
        num_shards=args.shards,
        generation_overrides=dict(args.generation),
        **sizes,
    )
    print(f"wrote {args.preset} checkpoint to {out}")


if __name__ == "__main__":
    main()
