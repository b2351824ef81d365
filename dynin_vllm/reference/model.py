"""Pure-torch reference forward of the LLaDA backbone (no vLLM).

Written from the upstream definition (``LLaDALlamaBlock``), independently of
``dynin_vllm.model``: it reads the Hugging Face tensor names straight from the
safetensors shards. Numerics follow upstream: RMSNorm computed in fp32, cast
back, *then* scaled by its weight; NeoX rotary embedding in fp32; bidirectional
scaled-dot-product attention; SwiGLU with the activation on ``ff_proj``;
untied LM head ``transformer.ff_out``.

An optional KV cache (keys after RoPE, per layer) supports the prefix-cache,
dual-cache and block reference samplers: ``forward(ids, start=s, cache=c)``
treats ``ids`` as positions ``s, s+1, ...`` attending to the cached positions
``[0, s)`` plus themselves, and ``suffix=c2`` adds the cached positions after
them (Fast-dLLM's dual cache, whose keys it caches before RoPE and rotates at
the same positions on every call: the same keys).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class ReferenceLLaDA:
    """LLaDA / MMaDA / Dynin-Omni forward pass over a weights dict."""

    def __init__(
        self, weights: dict[str, torch.Tensor], config: dict, dtype=torch.float32
    ):
        self.config = config
        self.dtype = dtype
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.n_kv_heads = config.get("n_kv_heads") or config["n_heads"]
        self.head_dim = config["d_model"] // self.n_heads
        self.eps = config["rms_norm_eps"]
        self.theta = config["rope_theta"]
        self.tied = config.get("weight_tying", False)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=torch.float32) -> ReferenceLLaDA:
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        index = json.loads((path / "model.safetensors.index.json").read_text())
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            weights.update(load_file(str(path / shard)))
        return cls(weights, config, dtype)

    def _t(self, name: str) -> torch.Tensor:
        return self.w[f"model.transformer.{name}"]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * weight

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: [B, H, T, D]
        d = self.head_dim
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        )
        freqs = positions.float()[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x32 = x.float()
        rotated = torch.cat([-x32[..., d // 2 :], x32[..., : d // 2]], dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        suffix: KVCache | None = None,
        return_cache: bool = False,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Logits ``[B, T, V]`` for ``ids [B, T]`` at positions ``start..start+T``.

        With ``cache`` (length ``start``), attention also covers the cached
        positions, and with ``suffix`` the cached positions after ``start + T``.
        With ``return_cache`` the result carries the KV of all ``start + T``
        positions (``suffix`` aside). ``key_mask`` (``[B, T]``, true = visible) hides
        keys, as upstream's padding ``attention_bias`` does; the rows of hidden
        positions are computed but meaningless.
        """
        if key_mask is not None and (cache is not None or suffix is not None):
            raise ValueError("key_mask is only supported without a cache")
        bsz, length = ids.shape
        positions = torch.arange(start, start + length)
        x = F.embedding(ids, self._t("wte.weight"))
        new_cache: KVCache = []
        for i in range(self.n_layers):
            p = f"blocks.{i}."
            h = self._rms(x, self._t(p + "attn_norm.weight"))
            q = (h @ self._t(p + "q_proj.weight").T).view(bsz, length, self.n_heads, -1)
            k = (h @ self._t(p + "k_proj.weight").T).view(
                bsz, length, self.n_kv_heads, -1
            )
            v = (h @ self._t(p + "v_proj.weight").T).view(
                bsz, length, self.n_kv_heads, -1
            )
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            q, k = self._rope(q, positions), self._rope(k, positions)
            if cache is not None:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            if return_cache:
                new_cache.append((k, v))
            if suffix is not None:
                k = torch.cat([k, suffix[i][0]], dim=2)
                v = torch.cat([v, suffix[i][1]], dim=2)
            rep = self.n_heads // self.n_kv_heads
            att = F.scaled_dot_product_attention(
                q,
                k.repeat_interleave(rep, 1),
                v.repeat_interleave(rep, 1),
                attn_mask=None if key_mask is None else key_mask.bool()[:, None, None],
                is_causal=False,
            )
            att = att.transpose(1, 2).reshape(bsz, length, -1)
            x = x + att @ self._t(p + "attn_out.weight").T
            h = self._rms(x, self._t(p + "ff_norm.weight"))
            gate = F.silu(h @ self._t(p + "ff_proj.weight").T)
            x = (
                x
                + (gate * (h @ self._t(p + "up_proj.weight").T))
                @ self._t(p + "ff_out.weight").T
            )
        x = self._rms(x, self._t("ln_f.weight"))
        head = self._t("wte.weight") if self.tied else self._t("ff_out.weight")
        logits = x @ head.T
        logits = logits[..., : self.config["vocab_size"]]
        return logits, (new_cache if return_cache else None)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Full bidirectional forward: ``[B, T] -> [B, T, V]``."""
        return self.forward(ids)[0]


def truncate(cache: KVCache, length: int) -> KVCache:
    """Keep the first ``length`` positions of a KV cache."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in cache]


def tail(cache: KVCache, start: int) -> KVCache:
    """Keep the positions of a KV cache from ``start`` on."""
    return [(k[:, :, start:], v[:, :, start:]) for k, v in cache]
