"""The tiny-checkpoint builders: CLI, real file layout, determinism, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dynin_vllm.multimodal.emova import load_emova
from dynin_vllm.multimodal.image_tokenizer import load_magvit2
from dynin_vllm.testing.make_codec_checkpoint import (
    main,
    make_emova_checkpoint,
    make_magvit2_checkpoint,
)


def test_cli_writes_loadable_checkpoints(tmp_path: Path) -> None:
    main([str(tmp_path / "m"), "--codec", "magvit2", "--seed", "3", "--set", "ch=64"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["ch"] == 64 and config["_class_name"] == "MAGVITv2"
    model = load_magvit2(tmp_path / "m")
    assert model.encoder.conv_in.weight.shape == (64, 3, 3, 3)

    main(
        [
            str(tmp_path / "e"),
            "--codec",
            "emova",
            "--set",
            "s2u.n_mels=24",
            "--set",
            "u2s.hidden_channels=8",
        ]
    )
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["s2u_overrides"]["n_mels"] == 24
    assert config["u2s_overrides"]["hidden_channels"] == 8
    assert len(config["u2s_style2idx"]) == 126
    model = load_emova(tmp_path / "e")
    assert model.encoder.encoder.wav2spec.featurizer.fb.shape == (1, 24, 257)
    assert model.decoder.enc_p.emb.weight.shape == (4274, 8)


def test_cli_rejects_bad_overrides(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--codec", "emova", "--set", "n_mels=3"])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "y"), "--codec", "magvit2", "--set", "ch"])
    with pytest.raises(Exception, match="unknown"):
        make_emova_checkpoint(tmp_path / "z", s2u_overrides={"n_mel": 3})


def test_builders_are_deterministic(tmp_path: Path) -> None:
    a = load_file(
        str(
            make_magvit2_checkpoint(tmp_path / "a", seed=1)
            / "pytorch_model.safetensors"
        )
    )
    b = load_file(
        str(
            make_magvit2_checkpoint(tmp_path / "b", seed=1)
            / "pytorch_model.safetensors"
        )
    )
    c = load_file(
        str(
            make_magvit2_checkpoint(tmp_path / "c", seed=2)
            / "pytorch_model.safetensors"
        )
    )
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv_in.weight"], c["encoder.conv_in.weight"])
    e1 = load_file(
        str(make_emova_checkpoint(tmp_path / "e1", seed=5) / "model.safetensors")
    )
    e2 = load_file(
        str(make_emova_checkpoint(tmp_path / "e2", seed=5) / "model.safetensors")
    )
    assert all(torch.equal(e1[k], e2[k]) for k in e1)


def test_weight_norm_magnitudes_match_directions(emova_dir: Path) -> None:
    tensors = load_file(str(emova_dir / "model.safetensors"))
    v = tensors["decoder.dec.ups.0.weight_v"]
    g = tensors["decoder.dec.ups.0.weight_g"]
    assert g.shape == (v.shape[0], 1, 1)
    assert torch.allclose(g.flatten(), v.flatten(1).norm(dim=1), atol=1e-5)
    pos_g = tensors[
        "encoder.encoder.feature_encoder.block_modules.3.pos_conv.0.weight_g"
    ]
    assert pos_g.shape[:2] == (1, 1)
