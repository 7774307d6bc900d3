"""Hugging Face GPT-2 checkpoints: a local directory read into the spec's format, and the spec's
weights written out as one (for tools that take nothing else).

GPT-2's Conv1D layers store [in, out], the spec's x @ W orientation, so tensors map by name
alone; the causal-mask buffers (attn.bias, attn.masked_bias) are not weights. No network: only
files on disk are read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import PipelineError
from .fileio import atomic_path, not_found, write_text_atomic
from .weights import file_sha256, torch_load_safely

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


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise PipelineError(
            f"weights {path} is a directory without {CONFIG_FILE}: give a Hugging Face GPT-2 "
            "checkpoint directory, or a .pt / .safetensors file in the spec's format"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{file}: not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise PipelineError(f"{file}: expected a JSON object")
    if config.get("model_type") != "gpt2":
        raise PipelineError(
            f"{path} is a {config.get('model_type')!r} checkpoint (config.json model_type); "
            "only GPT-2 checkpoints (model_type 'gpt2') are supported"
        )
    return config


def config_fields(config: dict, where: str = CONFIG_FILE) -> dict:
    """GPT2Config's fields (its defaults where absent) -> ModelConfig's."""
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if config.get(flag):
            raise PipelineError(f"{where}: {flag} is true, which this model cannot express")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise PipelineError(
            f"{where}: activation_function {activation!r} is not supported "
            f"(choose from {', '.join(ACTIVATIONS)})"
        )
    try:
        d = int(config.get("n_embd", 768))
        fields = dict(
            vocab_size=int(config.get("vocab_size", 50257)),
            max_seq_len=int(config.get("n_positions", 1024)),
            d_model=d,
            n_layers=int(config.get("n_layer", 12)),
            n_heads=int(config.get("n_head", 12)),
            d_mlp=int(config.get("n_inner") or 4 * d),
            ln_eps=float(config.get("layer_norm_epsilon", 1e-5)),
            gelu_approximate=ACTIVATIONS[activation],
            scale_attn=bool(config.get("scale_attn_weights", True)),
        )
        ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc}") from exc
    return fields


def weight_files(path: Path) -> list[Path]:
    """The files holding the weights, in the order Hugging Face prefers them."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise PipelineError(f"{path / index}: not a readable shard index ({exc})") from exc
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise PipelineError(
                    f"{path / index} names shard(s) not found: {', '.join(missing)}"
                )
            return [path / index, *(path / s for s in shards)]
    raise PipelineError(
        f"{path} has no weights: expected {SAFETENSORS} or {TORCH_BIN} (or a sharded index)"
    )


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint's shape and identity, from its config and the hashes of its files."""
    config = _read_config(path)
    fields = config_fields(config, str(path / CONFIG_FILE))
    digest = hashlib.sha256((path / CONFIG_FILE).read_bytes())
    for file in weight_files(path):
        digest.update(file_sha256(file).encode())
    sha = digest.hexdigest()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.resolve().name).strip("-.") or "checkpoint"
    return Checkpoint(
        path, f"{name}-{sha[:8]}", fields, f"the checkpoint {path.resolve().name} ({sha[:8]})", sha
    )


def checkpoint_sha256(path: Path) -> str:
    return read_checkpoint(path).sha256


def _load_safetensors(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PipelineError(f"weights {file} is not a readable safetensors file: {exc}") from exc


def read_weights(path: Path) -> dict:
    """The directory's tensors under the spec's names (buffers dropped); checked by the caller."""
    _read_config(path)
    raw: dict = {}
    for file in weight_files(path):
        if file.name.endswith(".json"):
            continue
        if file.suffix == ".safetensors":
            raw.update(_load_safetensors(file))
        else:
            loaded = torch_load_safely(file, "weights")
            if not isinstance(loaded, Mapping):
                raise PipelineError(f"weights {file}: expected a state dict")
            raw.update(loaded)
    return {
        spec_key(k): v
        for k, v in raw.items()
        if not str(k).endswith((".attn.bias", ".attn.masked_bias"))  # causal-mask buffers
    }


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
