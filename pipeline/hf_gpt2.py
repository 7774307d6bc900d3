"""Hugging Face GPT-2 checkpoints: a local directory read into the spec's format, and the spec's
weights written out as one (for tools that take nothing else).

GPT-2's Conv1D layers store [in, out], the spec's x @ W orientation, so tensors map by name
alone; the causal-mask buffers (attn.bias, attn.masked_bias) are not weights. No network: only
files on disk are read.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import PipelineError
from .fileio import atomic_path, not_found, write_text_atomic
from .reads import combined_sha256, file_sha256, read_bytes, torch_load_safely

CONFIG_FILE = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# GPT-2's activation names -> the model's gelu_approximate; gelu_new and gelu_fast are the same
# tanh formula written twice
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}

_TOP_KEYS = {
    "wte.weight": "transformer.word_embeddings.weight",
    "wpe.weight": "transformer.positional_embeddings.weight",
    "ln_f.weight": "transformer.final_ln.weight",
    "ln_f.bias": "transformer.final_ln.bias",
}
_LAYER_KEYS = {
    "ln_1": "pre_attn_ln",
    "attn.c_attn": "attn.qkv_proj",
    "attn.c_proj": "attn.out_proj",
    "ln_2": "pre_mlp_ln",
    "mlp.c_fc": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}
_LAYER_KEY = re.compile(r"h\.(\d+)\.(.+)\.(weight|bias)")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    size: str  # the size its variants are named with: '<directory name>-<hash prefix>'
    fields: dict  # ModelConfig fields from config.json
    description: str
    sha256: str


def spec_key(hf_key: str) -> str:
    """GPT-2's name (with or without the 'transformer.' prefix) -> the spec's, or itself."""
    key = hf_key.removeprefix("transformer.")
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    m = _LAYER_KEY.fullmatch(key)
    if m and m.group(2) in _LAYER_KEYS:
        return f"transformer.h.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}.{m.group(3)}"
    return hf_key


def hf_key(spec_name: str) -> str:
    """The spec's name -> GPT-2's (as GPT2LMHeadModel saves it)."""
    for hf, ours in _TOP_KEYS.items():
        if spec_name == ours:
            return f"transformer.{hf}"
    for hf, ours in _LAYER_KEYS.items():
        m = re.fullmatch(rf"transformer\.h\.(\d+)\.{re.escape(ours)}\.(weight|bias)", spec_name)
        if m:
            return f"transformer.h.{m.group(1)}.{hf}.{m.group(2)}"
    return spec_name


def in_hf_names(message: str) -> str:
    """A weights error rewritten with GPT-2's key names, which the user's files use."""
    return re.sub(r"transformer\.[\w.]+?\.(?:weight|bias)\b", lambda m: hf_key(m.group(0)), message)


def _checkpoint_file(path: Path, name: str, what: str) -> Path:
    """path/name as a regular file, or one line saying what the name is instead (a dangling link
    or a loop of links is named as such, not taken for an absent file)."""
    file = path / name
    if os.path.lexists(file) and not file.exists():
        raise not_found(file, what)
    if file.exists() and not file.is_file():
        raise PipelineError(f"{what} {file} is not a regular file (a directory, FIFO or device)")
    return file


def _read_config(path: Path) -> dict:
    file = _checkpoint_file(path, CONFIG_FILE, "the checkpoint's config")
    if not file.is_file():
        raise PipelineError(
            f"weights {path} is a directory without {CONFIG_FILE}: give a Hugging Face GPT-2 "
            "checkpoint directory, or a .pt / .safetensors file in the spec's format"
        )
    try:
        config = json.loads(read_bytes(file).decode("utf-8"), parse_constant=_no_constant)
    except OSError as exc:
        raise PipelineError(f"{file} cannot be read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PipelineError(f"{file}: not readable JSON ({str(exc)[:200]})") from exc
    if not isinstance(config, dict):
        raise PipelineError(f"{file}: expected a JSON object")
    if config.get("model_type") != "gpt2":
        raise PipelineError(
            f"{path} is a {config.get('model_type')!r} checkpoint (config.json model_type); "
            "only GPT-2 checkpoints (model_type 'gpt2') are supported"
        )
    return config


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")  # Python's json reads NaN and Infinity


def _integer(config: dict, key: str, default, where: str) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        # 32.9 was truncated to 32 and "300" read as 300: a config that says something else
        raise PipelineError(f"{where}: {key} must be an integer, got {json.dumps(value)[:40]}")
    if value < 1:
        raise PipelineError(f"{where}: {key} must be >= 1, got {value}")
    return value


def config_fields(config: dict, where: str = CONFIG_FILE) -> dict:
    """GPT2Config's fields (its defaults where absent) -> ModelConfig's, each checked for its
    type and range before anything is sized from it."""
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if config.get(flag):
            raise PipelineError(f"{where}: {flag} is true, which this model cannot express")
    activation = config.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise PipelineError(
            f"{where}: activation_function {json.dumps(activation)[:40]} is not supported "
            f"(choose from {', '.join(ACTIVATIONS)})"
        )
    eps = config.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise PipelineError(
            f"{where}: layer_norm_epsilon must be a positive finite number, got "
            f"{json.dumps(eps)[:40]}"
        )
    scale = config.get("scale_attn_weights", True)
    if not isinstance(scale, bool):
        raise PipelineError(f"{where}: scale_attn_weights must be true or false, got {scale!r}")
    d = _integer(config, "n_embd", 768, where)
    heads = _integer(config, "n_head", 12, where)
    if d % heads:
        raise PipelineError(f"{where}: n_embd {d} is not divisible by n_head {heads}")
    inner = config.get("n_inner")
    fields = dict(
        vocab_size=_integer(config, "vocab_size", 50257, where),
        max_seq_len=_integer(config, "n_positions", 1024, where),
        d_model=d,
        n_layers=_integer(config, "n_layer", 12, where),
        n_heads=heads,
        d_mlp=4 * d if inner is None else _integer(config, "n_inner", None, where),
        ln_eps=float(eps),
        gelu_approximate=ACTIVATIONS[activation],
        scale_attn=scale,
    )
    try:
        ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc}") from exc
    return fields


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
    config = _read_config(path)
    fields = config_fields(config, str(path / CONFIG_FILE))
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


def _load_safetensors(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_bytes(file))
    except OSError as exc:
        raise PipelineError(f"weights {file} cannot be read: {exc.strerror or exc}") from exc
    except (SafetensorError, ValueError) as exc:
        raise PipelineError(f"weights {file} is not a readable safetensors file: {exc}") from exc


def read_weights(path: Path) -> dict:
    """The directory's tensors under the spec's names (buffers dropped); checked by the caller."""
    _read_config(path)
    tensors: dict = {}
    given_as: dict[str, str] = {}  # spec name -> 'key in file' it was read as
    for file in weight_files(path):
        if file.name.endswith(".json"):
            continue
        if file.suffix == ".safetensors":
            loaded = _load_safetensors(file)
        else:
            loaded = torch_load_safely(file, "weights")
            if not isinstance(loaded, Mapping):
                raise PipelineError(f"weights {file}: expected a state dict")
        for key, value in loaded.items():
            if str(key).endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers
                continue
            name, where = spec_key(key), f"{key} in {file.name}"
            if name in given_as:  # two names, or two shards: keeping either would be a guess
                raise PipelineError(
                    f"weights {path}: {hf_key(name)} is given twice ({given_as[name]}, {where})"
                )
            tensors[name], given_as[name] = value, where
    return tensors


def read_spec_safetensors(path: Path) -> dict:
    """One .safetensors file: the spec's key names (GPT-2's are refused: their shape is in a
    config the file does not carry)."""
    if not path.is_file():
        raise not_found(path, "weights file")
    raw = _load_safetensors(path)
    if any(spec_key(k) != k for k in raw):
        raise PipelineError(
            f"weights {path} holds GPT-2's key names: give the checkpoint directory with its "
            f"{CONFIG_FILE} (the shape is there, not in the file)"
        )
    return raw


def gpt2_expressible(cfg: ModelConfig) -> bool:
    """GPT-2's block: the baseline connectivity, learned positions, every head its own keys, no
    window (eps, the 1/sqrt(h) scale and the GELU form are in its config)."""
    return (
        cfg.mlp_input == "t"
        and cfg.mlp_residual == "t"
        and cfg.positions == "learned"
        and cfg.kv_heads == cfg.n_heads
        and cfg.attn_window is None
    )


def hf_config(cfg: ModelConfig) -> dict:
    """config.json of a GPT-2 checkpoint with cfg's shape (baseline connectivity only)."""
    if not gpt2_expressible(cfg):
        raise PipelineError("GPT-2's checkpoint format cannot express this variant's block")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "activation_function": "gelu" if cfg.gelu_approximate == "none" else "gelu_new",
        "layer_norm_epsilon": cfg.ln_eps,
        "scale_attn_weights": cfg.scale_attn,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
    }


def save_checkpoint(state_dict: dict, cfg: ModelConfig, out_dir: Path) -> Path:
    """The spec's weights as a GPT-2 checkpoint directory (config.json, model.safetensors);
    the LM head is tied, so it is not written twice."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        hf_key(k): v.detach().to(torch.float32).contiguous().clone()
        for k, v in state_dict.items()
        if k != "lm_head.weight"
    }
    with atomic_path(out_dir / SAFETENSORS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(hf_config(cfg), indent=2) + "\n")
    return out_dir
