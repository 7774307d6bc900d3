"""The Llama family of Hugging Face checkpoints (Llama, Mistral, Qwen2: one layout): its config
and tensors in the spec's terms.

The family's block is the spec's wiring with other parts: RMSNorm, rotary positions (rotate-half,
the same pairing as model.py's), the gated SiLU MLP, grouped key/value heads, Mistral's sliding
window, biases on q/k/v only (Qwen2) or nowhere, an LM head of its own unless tied. Its Linear
layers store [out, in]; the spec's format stores [in, out] with q, k and v fused, so tensors are
transposed and concatenated here, one layer at a time.
"""

from __future__ import annotations

import json
import re
from typing import Optional

import torch

from .config import ModelConfig
from .errors import PipelineError
from .hf_fields import flag, integer, positive_number

MODEL_TYPES = ("llama", "mistral", "qwen2")
ACTIVATIONS = ("silu", "swish")  # one function, two names

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
# the family's per-layer names -> the spec's (q, k, v are fused into qkv_proj below)
_LAYER_KEYS = {
    "input_layernorm": "pre_attn_ln",
    "self_attn.o_proj": "attn.out_proj",
    "post_attention_layernorm": "pre_mlp_ln",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_TOP_KEYS = {
    "model.embed_tokens.weight": "transformer.word_embeddings.weight",
    "model.norm.weight": "transformer.final_ln.weight",
    "lm_head.weight": "lm_head.weight",
}


def _rope_base(config: dict, where: str) -> float:
    """rope_theta from transformers 5's rope_parameters or the older top-level keys; any scaling
    (linear, dynamic, yarn, llama3) is refused: the model implements the plain rotation."""
    params = config.get("rope_parameters")
    if params is None:
        params = {
            "rope_theta": config.get("rope_theta", 10000.0),
            **(config.get("rope_scaling") or {}),
        }
        key = "rope_scaling"
    else:
        key = "rope_parameters"
    if not isinstance(params, dict):
        raise PipelineError(f"{where}: {key} must be an object, got {json.dumps(params)[:60]}")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise PipelineError(
            f"{where}: {key} rope_type {json.dumps(kind)[:40]} is not implemented (only the plain "
            "rotation, rope_type 'default')"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise PipelineError(f"{where}: partial_rotary_factor is not implemented (only 1.0)")
    return positive_number(params, "rope_theta", 10000.0, f"{where}: {key}")


def _biases(config: dict, where: str) -> str:
    if config["model_type"] == "qwen2":
        return "qkv"  # Qwen2's q/k/v projections always have biases, o and the MLP none
    attention = flag(config, "attention_bias", False, where)
    mlp = flag(config, "mlp_bias", False, where) if config["model_type"] == "llama" else False
    if attention != mlp:
        raise PipelineError(
            f"{where}: attention_bias {json.dumps(attention)} with mlp_bias {json.dumps(mlp)} "
            "cannot be expressed (biases on every projection or on none)"
        )
    return "all" if attention else "none"


def _window(config: dict, where: str):
    if config["model_type"] == "mistral":
        window = config.get("sliding_window")
        return None if window is None else integer(config, "sliding_window", None, where)
    if config["model_type"] == "qwen2" and (
        config.get("use_sliding_window")
        or "sliding_attention"
        in (config.get("layer_types") if isinstance(config.get("layer_types"), list) else [])
    ):
        raise PipelineError(
            f"{where}: use_sliding_window (a window on some layers only) cannot be expressed"
        )
    return None


def config_fields(config: dict, where: str) -> dict:
    """LlamaConfig's, MistralConfig's or Qwen2Config's fields (transformers' defaults where
    absent) -> ModelConfig's; a key the model cannot express is named in one line."""
    activation = config.get("hidden_act", "silu")
    if activation not in ACTIVATIONS:
        raise PipelineError(
            f"{where}: hidden_act {json.dumps(activation)[:40]} is not supported (only silu)"
        )
    d = integer(config, "hidden_size", 4096, where)
    heads = integer(config, "num_attention_heads", 32, where)
    if d % heads:
        raise PipelineError(
            f"{where}: hidden_size {d} is not divisible by num_attention_heads {heads}"
        )
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != d // heads:
        raise PipelineError(
            f"{where}: head_dim {json.dumps(head_dim)[:20]} is not hidden_size / "
            f"num_attention_heads ({d // heads}), which this model cannot express"
        )
    kv_heads = integer(config, "num_key_value_heads", heads, where)
    fields = dict(
        vocab_size=integer(config, "vocab_size", 32000, where),
        max_seq_len=integer(config, "max_position_embeddings", 2048, where),
        d_model=d,
        n_layers=integer(config, "num_hidden_layers", 32, where),
        n_heads=heads,
        n_kv_heads=None if kv_heads == heads else kv_heads,
        d_mlp=integer(config, "intermediate_size", 11008, where),
        ln_eps=positive_number(config, "rms_norm_eps", 1e-6, where),
        positions="rope",
        rope_base=_rope_base(config, where),
        attn_window=_window(config, where),
        norm="rms",
        mlp="gated-silu",
        biases=_biases(config, where),
        tied_head=flag(config, "tie_word_embeddings", False, where),
    )
    try:
        ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc}") from exc
    return fields


def reference_overrides(changed: dict, config: dict) -> Optional[dict]:
    """The family's config keys for a variant's changes (the norm's eps; Mistral's window); None
    for a change its config cannot say."""
    keys = {"ln_eps": "rms_norm_eps"}
    if config["model_type"] == "mistral":
        keys["attn_window"] = "sliding_window"
    return None if set(changed) - set(keys) else {keys[k]: v for k, v in changed.items()}


def is_buffer(key: str) -> bool:
    return key.endswith("rotary_emb.inv_freq")  # older checkpoints saved the rotary frequencies


def spec_tensors(raw: dict, fields: dict, where: str) -> dict:
    """The family's tensors under the spec's names: [out, in] -> [in, out], q, k, v fused into
    qkv_proj. raw is emptied as it is converted (one copy of the weights at a time)."""
    out: dict = {}
    for key in list(raw):
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = raw.pop(key)
    if fields["tied_head"]:
        out.pop("lm_head.weight", None)  # tied: the embeddings serve as the head
    for i in range(fields["n_layers"]):
        prefix = f"model.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [raw.pop(f"{prefix}{p}_proj.{kind}", None) for p in "qkv"]
            if all(p is None for p in parts):
                continue
            if any(p is None for p in parts):
                name = "qkv"[[p is None for p in parts].index(True)]
                raise PipelineError(f"{where}: missing key {prefix}{name}_proj.{kind}")
            fused = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1)
            out[f"transformer.h.{i}.attn.qkv_proj.{kind}"] = fused.contiguous()
    for key in list(raw):
        m = _LAYER.fullmatch(key)
        if m and m.group(2) in _LAYER_KEYS:
            value = raw.pop(key)
            if m.group(3) == "weight" and value.dim() == 2:
                value = value.t().contiguous()
            out[f"transformer.h.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}.{m.group(3)}"] = value
    out.update(raw)  # what is left is unexpected: the check names it
    return out


def own_key(spec_name: str) -> str:
    """The spec's name -> the family's (as LlamaForCausalLM saves it)."""
    for ours, theirs in ((v, k) for k, v in _TOP_KEYS.items()):
        if spec_name == ours:
            return theirs
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", spec_name)
    if m:
        if m.group(2) == "attn.qkv_proj":
            return f"model.layers.{m.group(1)}.self_attn.q/k/v_proj.{m.group(3)}"
        for theirs, ours in _LAYER_KEYS.items():
            if m.group(2) == ours:
                return f"model.layers.{m.group(1)}.{theirs}.{m.group(3)}"
    return spec_name


def in_own_names(message: str) -> str:
    """A weights error rewritten with the family's key names; the spec's [in, out] shapes are
    said to be transposed from the file's."""
    named = re.sub(
        r"(?:transformer\.[\w.]+?|lm_head)\.(?:weight|bias)\b",
        lambda m: own_key(m.group(0)),
        message,
    )
    if named != message and "shape" in named:
        named += " (shapes in the spec's [in, out] layout, the file's transposed)"
    return named
