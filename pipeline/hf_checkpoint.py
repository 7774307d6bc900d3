"""Hugging Face checkpoint directories: config.json, weights in safetensors or torch files
(sharded with an index too), read into the spec's format by the checkpoint's family (its
`model_type`: GPT-2, or the Llama family). No network: only files on disk are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import hf_gpt2, hf_llama
from .config import ModelConfig
from .errors import PipelineError
from .fileio import not_found
from .hf_fields import CONFIG_FILE, no_constant
from .reads import (
    combined_sha256,
    file_sha256,
    load_safetensors_file,
    read_bytes,
    torch_load_safely,
)

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"

# model_type -> the module that reads that family's config and names its tensors
FAMILIES = {"gpt2": hf_gpt2, **{t: hf_llama for t in hf_llama.MODEL_TYPES}}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    size: str  # the size its variants are named with: '<directory name>-<hash prefix>'
    fields: dict  # ModelConfig fields from config.json
    description: str
    sha256: str


def _checkpoint_file(path: Path, name: str, what: str) -> Path:
    """path/name as a regular file, or one line saying what the name is instead (a dangling link
    or a loop of links is named as such, not taken for an absent file)."""
    file = path / name
    if os.path.lexists(file) and not file.exists():
        raise not_found(file, what)
    if file.exists() and not file.is_file():
        raise PipelineError(f"{what} {file} is not a regular file (a directory, FIFO or device)")
    return file


def read_config(path: Path) -> dict:
    file = _checkpoint_file(path, CONFIG_FILE, "the checkpoint's config")
    if not file.is_file():
        raise PipelineError(
            f"weights {path} is a directory without {CONFIG_FILE}: give a Hugging Face "
            "checkpoint directory, or a .pt / .safetensors file in the spec's format"
        )
    try:
        config = json.loads(read_bytes(file).decode("utf-8"), parse_constant=no_constant)
    except OSError as exc:
        raise PipelineError(f"{file} cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PipelineError(f"{file}: not readable JSON ({str(exc)[:200]})") from exc
    if not isinstance(config, dict):
        raise PipelineError(f"{file}: expected a JSON object")
    if not isinstance(config.get("model_type"), str) or config["model_type"] not in FAMILIES:
        raise PipelineError(
            f"{path} is a {config.get('model_type')!r} checkpoint (config.json model_type); "
            f"supported: {', '.join(FAMILIES)}"
        )
    return config


def _shard_names(index: Path) -> list[str]:
    """The shard files an index names, each confined to the checkpoint's directory: a name that
    is absolute or climbs out ('../other/model.safetensors', '/etc/passwd') is refused, never
    opened."""
    try:
        weight_map = json.loads(read_bytes(index).decode("utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PipelineError(f"{index}: not a readable shard index ({str(exc)[:160]})") from exc
    for name in names:
        if (
            not isinstance(name, str)
            or not name
            or os.path.isabs(name)
            or ".." in Path(name).parts
            or "\0" in name
        ):
            raise PipelineError(
                f"{index} names a shard outside the checkpoint's directory: {str(name)[:120]!r} "
                "(shards must be files inside it)"
            )
    return names


def weight_files(path: Path) -> list[Path]:
    """The files holding the weights, in the order Hugging Face prefers them."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        for name in (single, index):
            _checkpoint_file(path, name, "the checkpoint's weights file")
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            shards = _shard_names(path / index)
            for shard in shards:
                _checkpoint_file(path, shard, f"a shard named in {index}:")
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise PipelineError(
                    f"{path / index} names shard(s) not found: {', '.join(missing)}"
                )
            return [path / index, *(path / s for s in shards)]
    raise PipelineError(
        f"{path} has no weights: expected {SAFETENSORS} or {TORCH_BIN} (or a sharded index)"
    )


def check_weight_bytes(fields: dict, files: list[Path], where: str) -> None:
    """A config that describes more weights than the files can hold is refused before anything is
    sized from it (n_layer 10^6 once took 27 s and 2.6 GB to report missing keys): real
    checkpoints store at least 2 bytes per parameter (float16, bfloat16, float32)."""
    params = ModelConfig(**fields).n_params()
    stored = sum(f.stat().st_size for f in files if f.suffix != ".json")
    if stored < 2 * params:
        raise PipelineError(
            f"{where} describes {params:,} parameters ({2 * params / 2**20:,.1f} MiB even in 16 "
            f"bits) but the weight files hold {stored / 2**20:,.1f} MiB: the config does not "
            "belong to these weights"
        )


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint's shape and identity, from its config and the hashes of its files."""
    config = read_config(path)
    fields = config_fields(path, config)
    files = weight_files(path)
    check_weight_bytes(fields, files, str(path / CONFIG_FILE))
    sha = combined_sha256([file_sha256(f) for f in files], head=file_sha256(path / CONFIG_FILE))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.resolve().name).strip("-.") or "checkpoint"
    return Checkpoint(
        path, f"{name}-{sha[:8]}", fields, f"the checkpoint {path.resolve().name} ({sha[:8]})", sha
    )


def checkpoint_sha256(path: Path) -> str:
    return read_checkpoint(path).sha256


def identity_of_read(path: Path, hashes: dict[Path, str]) -> str:
    """The checkpoint's identity from the hashes of the bytes a load actually read (the same
    formula as read_checkpoint's, over what was read rather than what is on disk now)."""
    config = hashes.pop(path / CONFIG_FILE)
    return combined_sha256(list(hashes.values()), head=config)


def read_weights(path: Path) -> dict:
    """The directory's tensors under the spec's names, converted by the checkpoint's family (its
    buffers dropped); checked by the caller. Files are read one at a time and converted as they
    come, so a large checkpoint is not held twice."""
    config = read_config(path)
    family = FAMILIES[config["model_type"]]
    raw: dict = {}
    given_as: dict[str, str] = {}  # key -> the file it was read from
    for file in weight_files(path):
        if file.name.endswith(".json"):
            continue
        if file.suffix == ".safetensors":
            loaded = load_safetensors_file(file)
        else:
            loaded = torch_load_safely(file, "weights")
            if not isinstance(loaded, Mapping):
                raise PipelineError(f"weights {file}: expected a state dict")
        for key in list(loaded):
            if family.is_buffer(str(key)):
                continue
            if key in given_as:  # two shards: keeping either would be a guess
                raise PipelineError(
                    f"weights {path}: {key} is given twice ({given_as[key]}, {file.name})"
                )
            raw[key], given_as[key] = loaded.pop(key), file.name
    return family.spec_tensors(raw, config_fields(path, config), f"weights {path}")


def config_fields(path: Path, config: dict) -> dict:
    return FAMILIES[config["model_type"]].config_fields(config, str(path / CONFIG_FILE))


def in_own_names(path: Path, message: str) -> str:
    """A weights error rewritten with the checkpoint's own key names, which the user's files use."""
    try:
        family = FAMILIES[read_config(path)["model_type"]]
    except PipelineError:
        return message
    return family.in_own_names(message)


def model_type(path: Path) -> str:
    return read_config(path)["model_type"]


def reference_overrides(path: Path, cfg: ModelConfig) -> Optional[dict]:
    """The config.json keys to set so that transformers' own class for the checkpoint computes
    cfg's model (a variant of the checkpoint); None when its config cannot say the change."""
    config = read_config(path)
    own = ModelConfig(**config_fields(path, config))
    changed = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(ModelConfig)
        if getattr(cfg, f.name) != getattr(own, f.name)
    }
    return FAMILIES[config["model_type"]].reference_overrides(changed, config)
