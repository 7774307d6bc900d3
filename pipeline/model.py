"""The spec's GPT-2-like decoder in PyTorch.

Parameters are stored in the supplied state dict's own layout ([in, out] matrices, fused qkv),
so the module's state_dict() is the file format and loading is a plain load_state_dict.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class Projection(nn.Module):
    """y = x W + b with W stored [in, out], as the spec writes it (GPT-2's Conv1D)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
    """Causal multi-head attention: q, k, v [S, d] -> [S, d] (heads are column blocks of d)."""
    seq, d = q.shape
    heads = lambda t: t.view(seq, n_heads, d // n_heads).transpose(0, 1).unsqueeze(0)  # [1, N_h, S, h]
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True, scale=scale)
    return y[0].transpose(0, 1).reshape(seq, d)


@torch.library.custom_op("pipeline::causal_attention", mutates_args=())
def causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
    """The same function as one opaque op, so an exporter can map it to a fused attention kernel."""
    return causal_attention(q, k, v, n_heads, scale)


@causal_attention_op.register_fake
def _(q, k, v, n_heads, scale):
    return torch.empty_like(q)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn else 1.0
        self.qkv_proj = Projection(cfg.d_model, 3 * cfg.d_model)
        self.out_proj = Projection(cfg.d_model, cfg.d_model)
        self.attend = causal_attention  # export may swap in causal_attention_op: same math

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [S, 3d] = [Q | K | V]; head i of Q is columns [i*h, (i+1)*h) of the Q block
        q, k, v = self.qkv_proj(x).split(self.d_model, dim=-1)
        return self.out_proj(self.attend(q, k, v, self.n_heads, self.scale))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.approximate = cfg.gelu_approximate
        self.up_proj = Projection(cfg.d_model, cfg.d_mlp)
        self.down_proj = Projection(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate=self.approximate))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp_input, self.mlp_residual = cfg.mlp_input, cfg.mlp_residual
        self.pre_attn_ln = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.pre_mlp_ln = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x + self.attn(self.pre_attn_ln(x))
        streams = {"x": x, "t": t}
        m = self.mlp(self.pre_mlp_ln(streams[self.mlp_input]))
        return m if self.mlp_residual is None else streams[self.mlp_residual] + m


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positional_embeddings = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.h = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        self.final_ln = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)


class GPT(nn.Module):
    """input_ids LongTensor [1, S] -> logits [S, V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)

    def use_fused_attention_op(self, enabled: bool = True) -> "GPT":
        """Route attention through the opaque custom op (for export to a fused kernel)."""
        for layer in self.transformer.h:
            layer.attn.attend = causal_attention_op if enabled else causal_attention
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[0]
        positions = torch.arange(ids.shape[0], device=ids.device)
        y = self.transformer.word_embeddings(ids) + self.transformer.positional_embeddings(positions)
        for layer in self.transformer.h:
            y = layer(y)
        y = self.transformer.final_ln(y)
        return y @ self.transformer.word_embeddings.weight.t()  # tied LM head, no bias
