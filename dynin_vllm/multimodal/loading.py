"""Checkpoint resolution and strict state-dict loading for the media codecs.

Where a codec comes from, first match wins:

1. the ``path`` argument of the loader (a local directory or a hub id),
2. the environment variable (``DYNIN_MAGVIT_PATH`` / ``DYNIN_EMOVA_PATH``),
3. the default hub id (``snu-aidas/magvitv2`` /
   ``snu-aidas/emova_speech_tokenizer_hf``).

Hub ids go through :func:`huggingface_hub.snapshot_download`, which honours
``HF_HUB_OFFLINE`` / ``HF_HOME`` (offline: only the local cache is used).

Loading is strict: a tensor the module lacks, a tensor the file lacks or a
shape mismatch raises :class:`CheckpointError` naming the tensors. The only
exceptions are passed in explicitly by each codec (training-only tensors to
skip, deterministic buffers that may be absent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

MAGVIT_PATH_ENV = "DYNIN_MAGVIT_PATH"
EMOVA_PATH_ENV = "DYNIN_EMOVA_PATH"
MAGVIT_DEFAULT_REPO = "snu-aidas/magvitv2"
EMOVA_DEFAULT_REPO = "snu-aidas/emova_speech_tokenizer_hf"

CONFIG_NAME = "config.json"
#: Weight files tried in order (the first existing one is read).
WEIGHT_FILES = (
    "pytorch_model.safetensors",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
_MAX_LISTED = 20
T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A codec checkpoint cannot be found or does not match the network."""


def resolve_checkpoint_dir(
    path: str | os.PathLike | None,
    *,
    env_var: str,
    default_repo: str,
    revision: str | None = None,
) -> Path:
    """Return a local directory holding the codec files (see module docstring)."""
    source = (
        os.fspath(path) if path is not None else os.environ.get(env_var) or default_repo
    )
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(
            f"codec checkpoint {source!r} is not a directory nor a hub id "
            f"(set {env_var} or pass path=...)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt"]
    try:
        local = Path(
            snapshot_download(source, revision=revision, allow_patterns=patterns)
        )
        if not any((local / name).is_file() for name in WEIGHT_FILES):
            # Only a pickled checkpoint is published: fetch it as well.
            local = Path(
                snapshot_download(
                    source, revision=revision, allow_patterns=[*patterns, "*.bin"]
                )
            )
        return local
    except Exception as exc:  # hub errors have many types; all mean "unavailable"
        raise CheckpointError(
            f"cannot fetch codec checkpoint {source!r} from the hub ({exc}); "
            f"download it and set {env_var} to the directory (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')})"
        ) from exc


#: Sub-directories of a model directory that hold its codecs, when shipped
#: beside it (the embedded tiny checkpoint does; the hub repos do not).
MAGVIT_SUBDIR = "magvitv2"
EMOVA_SUBDIR = "emova_speech_tokenizer"


def locate_codec(
    model: str | os.PathLike | None,
    *,
    env_var: str,
    subdir: str,
    default_repo: str,
) -> Path:
    """The codec directory for the model at ``model`` (a directory or hub id).

    First match wins: the environment variable ``env_var``; the model
    directory's ``subdir``; the hub id ``default_repo`` (downloaded, or read
    from the local cache when offline). Raises :class:`CheckpointError`
    saying what to download when none is available.
    """
    if os.environ.get(env_var):
        return resolve_checkpoint_dir(None, env_var=env_var, default_repo=default_repo)
    if model is not None:
        beside = Path(model).expanduser() / subdir
        if beside.is_dir():
            return beside
    try:
        return resolve_checkpoint_dir(
            default_repo, env_var=env_var, default_repo=default_repo
        )
    except CheckpointError as exc:
        raise CheckpointError(
            f"no codec weights found for this model: download {default_repo} and "
            f"set {env_var} to its directory, or place it in <model dir>/{subdir} "
            f"({exc})"
        ) from exc


def read_config(directory: Path) -> dict[str, Any]:
    """Parse ``config.json`` (an empty dict when the file is absent)."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return config


def config_with_overrides(cls: type[T], overrides: Mapping[str, Any] | None) -> T:
    """Instantiate the dataclass ``cls`` with ``overrides`` (JSON lists become
    tuples); unknown keys raise ``ValueError``."""
    overrides = dict(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    for name, value in overrides.items():
        if isinstance(value, list):
            overrides[name] = tuple(
                tuple(v) if isinstance(v, list) else v for v in value
            )
    return cls(**overrides)


def read_state_dict(
    directory: Path, names: Iterable[str] = WEIGHT_FILES
) -> dict[str, torch.Tensor]:
    """Read the first weight file of ``names`` found in ``directory``."""
    names = tuple(names)
    for name in names:
        path = directory / name
        if path.is_file():
            return _read_weights(path)
    raise CheckpointError(f"no weight file ({', '.join(names)}) in {directory}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        if path.name.endswith(".index.json"):
            index = json.loads(path.read_text(encoding="utf-8"))
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                tensors.update(load_file(str(path.parent / shard)))
            return tensors
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc}") from exc


def normalize_weight_norm_keys(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename new-style weight-norm keys (``X.parametrizations.weight.original0/1``)
    to the old-style ``X.weight_g`` / ``X.weight_v`` the modules use."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".parametrizations.weight.original0"):
            key = key[: -len(".parametrizations.weight.original0")] + ".weight_g"
        elif key.endswith(".parametrizations.weight.original1"):
            key = key[: -len(".parametrizations.weight.original1")] + ".weight_v"
        out[key] = tensor
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    # A pattern ending in "." is a prefix; any other pattern is an exact name.
    return any(key.startswith(p) if p.endswith(".") else key == p for p in patterns)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    skip: Iterable[str] = (),
    optional: Iterable[str] = (),
    source: str = "checkpoint",
) -> None:
    """Copy ``state_dict`` into ``module`` (as float32 for floating tensors).

    ``skip``: names (or prefixes ending in ``"."``) of file tensors the module
    intentionally lacks. ``optional``: module tensors that may be absent from
    the file (they keep their constructed value). Anything else that does not
    line up raises :class:`CheckpointError` naming the tensors.
    """
    skip = tuple(skip)
    optional = frozenset(optional)
    state_dict = normalize_weight_norm_keys(state_dict)
    expected = module.state_dict()
    unexpected = sorted(
        k for k in state_dict if k not in expected and not _matches(k, skip)
    )
    missing = sorted(k for k in expected if k not in state_dict and k not in optional)
    mismatched = sorted(
        f"{k} (file {list(state_dict[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"mis-shaped tensors: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the network; " + "; ".join(problems)
        )
    with torch.no_grad():
        for key, target in expected.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if value.is_floating_point():
                value = value.to(torch.float32)
            target.copy_(value.to(target.dtype))
