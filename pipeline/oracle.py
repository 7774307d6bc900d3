"""Hugging Face GPT-2 as an independent oracle for the variants it can express.

Used to make the stand-in example logits and by the tests; never by the product's own forward.
Needs the `test` extra (transformers).
"""
from __future__ import annotations

import torch

from .config import ModelConfig

# HF name -> our name, per layer where marked with {i}.
_HF_KEYS = {
    "transformer.wte.weight": "transformer.word_embeddings.weight",
    "transformer.wpe.weight": "transformer.positional_embeddings.weight",
    "transformer.ln_f.weight": "transformer.final_ln.weight",
    "transformer.ln_f.bias": "transformer.final_ln.bias",
}
_HF_LAYER_KEYS = {
    "ln_1": "pre_attn_ln", "attn.c_attn": "attn.qkv_proj", "attn.c_proj": "attn.out_proj",
    "ln_2": "pre_mlp_ln", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj",
}


def expressible(cfg: ModelConfig) -> bool:
    """GPT-2's block is fixed to the baseline connectivity."""
    return cfg.mlp_input == "t" and cfg.mlp_residual == "t"


def hf_gpt2(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype=torch.float64):
    from transformers import GPT2Config, GPT2LMHeadModel

    if not expressible(cfg):
        raise ValueError("Hugging Face GPT-2 cannot express this block connectivity")
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
        activation_function="gelu" if cfg.gelu_approximate == "none" else "gelu_new",
        layer_norm_epsilon=cfg.ln_eps, scale_attn_weights=cfg.scale_attn,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None,
    )
    model = GPT2LMHeadModel(hf_cfg)
    mapped = {hf: state_dict[ours] for hf, ours in _HF_KEYS.items()}
    for i in range(cfg.n_layers):
        for hf, ours in _HF_LAYER_KEYS.items():
            for p in ("weight", "bias"):
                mapped[f"transformer.h.{i}.{hf}.{p}"] = state_dict[f"transformer.h.{i}.{ours}.{p}"]
    mapped["lm_head.weight"] = state_dict["lm_head.weight"]
    result = model.load_state_dict(mapped, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if leftover or result.unexpected_keys:
        raise RuntimeError(f"HF mapping incomplete: missing {leftover}, unexpected {result.unexpected_keys}")
    model.config._attn_implementation = "eager"
    return model.to(dtype).eval()


@torch.no_grad()
def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [S] or [1, S] -> logits [S, V]; [B, S] -> [B, S, V] (in the model's dtype)."""
    if input_ids.dim() == 2 and input_ids.shape[0] > 1:
        return model(input_ids).logits
    return model(input_ids.reshape(1, -1)).logits[0]
