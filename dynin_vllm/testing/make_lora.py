"""Write a PEFT LoRA adapter for a tiny checkpoint, and the checkpoint it merges to.

    python -m dynin_vllm.testing.make_lora CHECKPOINT ADAPTER [--merged OUT]

The adapter is what ``peft`` saves: ``adapter_config.json`` and
``adapter_model.safetensors`` with tensors named
``base_model.model.<module path>.lora_{A,B}.weight``, the module paths being
the checkpoint's own (``model.transformer.blocks.N.q_proj`` ...). It adapts
every attention and MLP projection of the blocks: ``q_proj``, ``k_proj``,
``v_proj``, ``attn_out``, ``ff_proj`` (the gate), ``up_proj`` and ``ff_out``
(the MLP down projection). vLLM fuses q/k/v and gate/up into ``qkv_proj`` and
``gate_up_proj``; the model's ``packed_modules_mapping`` lets its LoRA loader
take the separate PEFT projections, so the names stay the HF ones.

``target_modules`` is written as PEFT's full-match regular expression over
the blocks: the plain name ``ff_out`` would also match the LM head
(``model.transformer.ff_out``), which vLLM does not adapt.

The merged checkpoint is the base checkpoint with ``W + (alpha / r) B A`` in
place of every adapted ``W``, in the same layout (names, shapes, shards,
config and tokenizer). Adapted tensors are merged and stored in float32, so
an engine running in float32 sees the adapter's exact sum rather than a
bfloat16 rounding of it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dynin_vllm.model.layout import PREFIX

#: Block projections the adapter adapts (the HF module names).
TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "ff_proj",
    "up_proj",
    "ff_out",
)

#: PEFT ``target_modules`` (a regex is matched against whole module names):
#: the block projections only, never the LM head ``transformer.ff_out``.
TARGET_REGEX = r".*\.blocks\.\d+\.(" + "|".join(TARGET_MODULES) + ")"

PEFT_PREFIX = "base_model.model."


def _weight_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    shapes: dict[str, tuple[int, ...]] = {}
    for file_name in sorted(set(index["weight_map"].values())):
        with safe_open(str(checkpoint / file_name), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def adapted_modules(checkpoint: Path) -> dict[str, tuple[int, int]]:
    """Module path -> (out_features, in_features) of every adapted projection."""
    modules: dict[str, tuple[int, int]] = {}
    for name, shape in _weight_shapes(checkpoint).items():
        module = name.removesuffix(".weight")
        parts = module.split(".")
        if (
            module.startswith(f"{PREFIX}blocks.")
            and len(parts) == 5
            and parts[-1] in TARGET_MODULES
        ):
            modules[module] = (shape[0], shape[1])
    return dict(sorted(modules.items()))


def make_lora_adapter(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    strength: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write a PEFT LoRA adapter for ``checkpoint`` into ``out_dir``.

    ``lora_A`` and ``lora_B`` are seeded random matrices (not PEFT's zero
    ``lora_B`` initialisation) scaled so that the update ``(alpha / r) B A``
    of each projection is about ``strength`` times its base weight: enough to
    change what a tiny model generates.
    """
    checkpoint, out = Path(checkpoint), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scaling = alpha / rank
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, (out_features, in_features) in adapted_modules(checkpoint).items():
        # Base weights are randn / sqrt(in): match that scale for B A.
        lora_a = torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)
        lora_b = torch.randn(out_features, rank, generator=gen)
        lora_b *= strength / (math.sqrt(rank) * scaling)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = lora_a
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = lora_b
    save_file(
        tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"}
    )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(checkpoint),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": TARGET_REGEX,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def lora_deltas(adapter: str | Path) -> dict[str, torch.Tensor]:
    """Checkpoint tensor name -> ``(alpha / r) B A`` for every adapted weight."""
    adapter = Path(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    deltas: dict[str, torch.Tensor] = {}
    for name, lora_a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        lora_b = tensors[name.replace(".lora_A.", ".lora_B.")]
        deltas[f"{module}.weight"] = scaling * (lora_b.double() @ lora_a.double())
    return deltas


def merge_lora(
    checkpoint: str | Path, adapter: str | Path, out_dir: str | Path
) -> Path:
    """Write ``checkpoint`` with ``adapter`` merged in into ``out_dir``."""
    checkpoint, out = Path(checkpoint), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deltas = lora_deltas(adapter)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    unknown = sorted(set(deltas) - set(index["weight_map"]))
    if unknown:
        raise ValueError(f"adapter adapts tensors the checkpoint lacks: {unknown}")
    total = 0
    for file_name in sorted(set(index["weight_map"].values())):
        shard = load_file(str(checkpoint / file_name))
        for name, delta in deltas.items():
            if name in shard:
                shard[name] = (shard[name].double() + delta).float()
        total += sum(t.numel() * t.element_size() for t in shard.values())
        save_file(shard, str(out / file_name), metadata={"format": "pt"})
    index["metadata"] = {"total_size": total}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for path in checkpoint.iterdir():
        if path.is_file() and not path.name.startswith("model"):
            shutil.copy2(path, out / path.name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="base checkpoint directory")
    parser.add_argument("adapter", help="adapter output directory")
    parser.add_argument("--merged", help="also write the merged checkpoint here")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    parser.add_argument("--alpha", type=int, default=16, help="lora_alpha")
    parser.add_argument(
        "--strength", type=float, default=0.5, help="size of B A relative to W"
    )
    parser.add_argument("--seed", type=int, default=0, help="adapter weight seed")
    args = parser.parse_args(argv)
    adapter = make_lora_adapter(
        args.checkpoint,
        args.adapter,
        rank=args.rank,
        alpha=args.alpha,
        strength=args.strength,
        seed=args.seed,
    )
    print(f"wrote LoRA adapter to {adapter}")
    if args.merged:
        merged = merge_lora(args.checkpoint, adapter, args.merged)
        print(f"wrote merged checkpoint to {merged}")


if __name__ == "__main__":
    main()
