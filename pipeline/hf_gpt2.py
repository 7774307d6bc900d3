"""The GPT-2 family of Hugging Face checkpoints (hf_checkpoint reads the directory): its config
and key names in the spec's terms, and the spec's weights written out as a GPT-2 checkpoint (for
tools that take nothing else).

GPT-2's Conv1D layers store [in, out], the spec's x @ W orientation, so tensors map by name
alone; the causal-mask buffers (attn.bias, attn.masked_bias) are not weights. No network: only
files on disk are read.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import torch

from .config import ModelConfig
from .errors import PipelineError
from .fileio import atomic_path, not_found, write_text_atomic
from .hf_fields import CONFIG_FILE
from .hf_fields import integer as _integer
from .reads import load_safetensors_file

SAFETENSORS = "model.safetensors"
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


def in_own_names(message: str) -> str:
    """A weights error rewritten with GPT-2's key names, which the user's files use."""
    return re.sub(r"transformer\.[\w.]+?\.(?:weight|bias)\b", lambda m: hf_key(m.group(0)), message)


def reference_overrides(changed: dict, config: dict) -> Optional[dict]:
    """GPT2Config's keys for a variant's changes; None for a change GPT-2's config cannot say."""
    keys = {"ln_eps": "layer_norm_epsilon", "scale_attn": "scale_attn_weights"}
    out = {keys[k]: v for k, v in changed.items() if k in keys}
    if "gelu_approximate" in changed:
        out["activation_function"] = "gelu_new" if changed["gelu_approximate"] == "tanh" else "gelu"
    return None if set(changed) - set(keys) - {"gelu_approximate"} else out


def is_buffer(key: str) -> bool:
    return key.endswith((".attn.bias", ".attn.masked_bias"))  # the causal-mask buffers


def spec_tensors(raw: dict, fields: dict, where: str) -> dict:
    """GPT-2's tensors under the spec's names: Conv1D stores [in, out] already, so by name alone."""
    tensors: dict = {}
    given_as: dict[str, str] = {}  # spec name -> the key it was read as
    for key, value in raw.items():
        name = spec_key(key)
        if name in given_as:  # two names for one tensor: keeping either would be a guess
            raise PipelineError(f"{where}: {hf_key(name)} is given twice ({given_as[name]}, {key})")
        tensors[name], given_as[name] = value, key
    return tensors


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


def read_spec_safetensors(path: Path) -> dict:
    """One .safetensors file: the spec's key names (GPT-2's are refused: their shape is in a
    config the file does not carry)."""
    if not path.is_file():
        raise not_found(path, "weights file")
    raw = load_safetensors_file(path)
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
