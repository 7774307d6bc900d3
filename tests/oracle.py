"""Hugging Face GPT-2 (and GPT-NeoX, for rotary positions) as independent oracles for the
variants they can express.

Used to make the stand-in example logits and by the tests; never by the product's own forward.
Needs the `test` extra (transformers).
"""

from __future__ import annotations

import torch

from pipeline.config import ModelConfig

# HF name -> our name, per layer where marked with {i}.
_HF_KEYS = {
    "transformer.wte.weight": "transformer.word_embeddings.weight",
    "transformer.wpe.weight": "transformer.positional_embeddings.weight",
    "transformer.ln_f.weight": "transformer.final_ln.weight",
    "transformer.ln_f.bias": "transformer.final_ln.bias",
}
_HF_LAYER_KEYS = {
    "ln_1": "pre_attn_ln",
    "attn.c_attn": "attn.qkv_proj",
    "attn.c_proj": "attn.out_proj",
    "ln_2": "pre_mlp_ln",
    "mlp.c_fc": "mlp.up_proj",
    "mlp.c_proj": "mlp.down_proj",
}


def expressible(cfg: ModelConfig) -> bool:
    """Which configs GPT-2 can express is a fact about GPT-2, not a computation the oracle checks:
    the package's predicate serves (the oracle keeps its own weight mapping and math)."""
    from pipeline.hf_gpt2 import gpt2_expressible

    return gpt2_expressible(cfg)


def neox_expressible(cfg: ModelConfig) -> bool:
    """GPT-NeoX with sequential residuals: the baseline block with rotary positions, exact GELU and
    scaled attention; one key/value head per query head, no window."""
    return (
        cfg.mlp_input == "t"
        and cfg.mlp_residual == "t"
        and cfg.positions == "rope"
        and cfg.kv_heads == cfg.n_heads
        and cfg.attn_window is None
        and cfg.gelu_approximate == "none"
        and cfg.scale_attn
    )


def hf_neox(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype=torch.float64):
    """GPTNeoXForCausalLM (rotary_pct 1.0, base cfg.rope_base, use_parallel_residual False, tied
    output) with the supplied weights mapped: Linear stores [out, in], and NeoX's fused qkv is
    laid out per head ([q_i | k_i | v_i] for head i), ours as [Q | K | V]."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if not neox_expressible(cfg):
        raise ValueError("Hugging Face GPT-NeoX cannot express this config")
    d, h, n = cfg.d_model, cfg.head_dim, cfg.n_heads
    hf_cfg = GPTNeoXConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=d,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=n,
        intermediate_size=cfg.d_mlp,
        hidden_act="gelu",
        max_position_embeddings=cfg.max_seq_len,
        layer_norm_eps=cfg.ln_eps,
        use_parallel_residual=False,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": cfg.rope_base,
            "partial_rotary_factor": 1.0,
        },
        attention_bias=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPTNeoXForCausalLM(hf_cfg)
    sd = state_dict
    mapped = {
        "gpt_neox.embed_in.weight": sd["transformer.word_embeddings.weight"],
        "gpt_neox.final_layer_norm.weight": sd["transformer.final_ln.weight"],
        "gpt_neox.final_layer_norm.bias": sd["transformer.final_ln.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.n_layers):
        ours, hf = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        w, b = sd[ours + "attn.qkv_proj.weight"], sd[ours + "attn.qkv_proj.bias"]  # [d, 3d], [3d]
        per_head = lambda t: (
            t.reshape(*t.shape[:-1], 3, n, h).transpose(-3, -2).reshape(*t.shape[:-1], 3 * d)
        )
        mapped[hf + "attention.query_key_value.weight"] = per_head(w).t()
        mapped[hf + "attention.query_key_value.bias"] = per_head(b)
        for hf_name, our_name in (
            ("input_layernorm", "pre_attn_ln"),
            ("post_attention_layernorm", "pre_mlp_ln"),
        ):
            for p in ("weight", "bias"):
                mapped[f"{hf}{hf_name}.{p}"] = sd[f"{ours}{our_name}.{p}"]
        for hf_name, our_name in (
            ("attention.dense", "attn.out_proj"),
            ("mlp.dense_h_to_4h", "mlp.up_proj"),
            ("mlp.dense_4h_to_h", "mlp.down_proj"),
        ):
            mapped[f"{hf}{hf_name}.weight"] = sd[f"{ours}{our_name}.weight"].t()
            mapped[f"{hf}{hf_name}.bias"] = sd[f"{ours}{our_name}.bias"]
    result = model.load_state_dict(mapped, strict=False)
    leftover = [
        k
        for k in result.missing_keys
        if "rotary_emb" not in k and "masked_bias" not in k and not k.endswith("attention.bias")
    ]
    if leftover or result.unexpected_keys:
        raise RuntimeError(
            f"HF mapping incomplete: missing {leftover}, unexpected {result.unexpected_keys}"
        )
    model.config._attn_implementation = "eager"
    return model.to(dtype).eval()


def hf_gpt2(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype=torch.float64):
    from transformers import GPT2Config, GPT2LMHeadModel

    if not expressible(cfg):
        raise ValueError("Hugging Face GPT-2 cannot express this block connectivity")
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        activation_function="gelu" if cfg.gelu_approximate == "none" else "gelu_new",
        layer_norm_epsilon=cfg.ln_eps,
        scale_attn_weights=cfg.scale_attn,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(hf_cfg)
    mapped = {hf: state_dict[ours] for hf, ours in _HF_KEYS.items()}
    for i in range(cfg.n_layers):
        for hf, ours in _HF_LAYER_KEYS.items():
            for p in ("weight", "bias"):
                mapped[f"transformer.h.{i}.{hf}.{p}"] = state_dict[f"transformer.h.{i}.{ours}.{p}"]
    mapped["lm_head.weight"] = state_dict["lm_head.weight"]
    result = model.load_state_dict(mapped, strict=False)
    leftover = [
        k for k in result.missing_keys if not k.endswith((".attn.bias", ".attn.masked_bias"))
    ]
    if leftover or result.unexpected_keys:
        raise RuntimeError(
            f"HF mapping incomplete: missing {leftover}, unexpected {result.unexpected_keys}"
        )
    model.config._attn_implementation = "eager"
    return model.to(dtype).eval()


@torch.no_grad()
def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [S] or [1, S] -> logits [S, V]; [B, S] -> [B, S, V] (in the model's dtype)."""
    if input_ids.dim() == 2 and input_ids.shape[0] > 1:
        return model(input_ids).logits
    return model(input_ids.reshape(1, -1)).logits[0]
