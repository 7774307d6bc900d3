"""The spec's GPT-2-like decoder in PyTorch, with batches, position offsets and a KV cache.

Parameters are stored in the supplied state dict's own layout ([in, out] matrices, fused qkv),
so the module's state_dict() is the file format and loading is a plain load_state_dict.

Contract: forward(input_ids [B, S], past=None) -> logits [B, S, V]. Positions are
past_length + arange(S) (or the caller's position_ids); query i of the new block sees every past
key and the new keys up to itself, and an optional attention_mask [B, past_length + S] (1: token,
0: padding) hides padded keys. The spec's [1, S] -> [S, V] is the B = 1 case: logits[0].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# one layer's cache: (key, value), each [B, N_h, past_length, h]
KV = tuple[torch.Tensor, torch.Tensor]


class Projection(nn.Module):
    """y = x W + b with W stored [in, out], as the spec writes it (GPT-2's Conv1D); the Llama
    family's projections have no b."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one 2-D GEMM with the bias fused (addmm), whatever the leading dims
        flat = x.reshape(-1, x.shape[-1])
        y = flat @ self.weight if self.bias is None else torch.addmm(self.bias, flat, self.weight)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, Llama's norm: no centring, no bias."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Div by Sqrt, the form ORT fuses into SimplifiedLayerNormalization
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.d_model, cfg.ln_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)


def masked_value(dtype: torch.dtype) -> float:
    # the dtype's lowest finite value, not -inf: a row with every key masked (a left-pad query)
    # then gets a uniform softmax instead of NaN, and NaN never reaches the real tokens
    return torch.finfo(dtype).min


def window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Key n visible to query m: n <= m, and m - window < n when window > 0 (0: no window)."""
    visible = key_pos[None, :] < query_pos[:, None] + 1
    if window:
        visible = visible & (key_pos[None, :] > query_pos[:, None] - window)
    return visible


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, N_kv, T, h] -> [B, N_h, T, h]: query head i reads key/value head i // (N_h / N_kv)."""
    return t if t.shape[1] == n_heads else t.repeat_interleave(n_heads // t.shape[1], dim=1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half layout (GPT-NeoX, Llama): for i < h/2 the pair (x_i, x_{i+h/2})
    turns by its angle. x [B, H, S, h]; cos, sin [B, 1, S, h/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def sdpa_route(
    attn: Attention, q, k, v, past: Optional[KV], mask: Optional[torch.Tensor], key_mask
):
    """softmax(q k^T * scale + mask) v per head, by torch's SDPA: q [B, S, d], k/v [B, S, N_kv h],
    past [B, N_kv, P, h] each -> (y [B, S, d], present cache). mask None means the plain causal
    square, where the fused kernel skips the masked half; key_mask is already inside mask."""
    q, k, v, present = attn.with_cache(q, k, v, past)
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scale)
    else:
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, masked_value(q.dtype))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.merge(y), present


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_model, self.head_dim = (
            cfg.n_heads,
            cfg.kv_heads,
            cfg.d_model,
            cfg.head_dim,
        )
        self.window = cfg.attn_window or 0
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn else 1.0
        self.qkv_proj = Projection(cfg.d_model, cfg.qkv_width, bias=cfg.biases != "none")
        self.out_proj = Projection(cfg.d_model, cfg.d_model, bias=cfg.biases == "all")
        # how the attention itself is computed; the exporters swap in their own forms of the same
        # function for the length of an export (export/routes.py)
        self.route = sdpa_route

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, N, S, h]

    def with_cache(self, q, k, v, past: Optional[KV]):
        """Heads of q [B, N_h, S, h], and of k, v after the cached ones; the present cache keeps
        N_kv heads, the returned k, v have one per query head."""
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        return q, repeat_kv(k, self.n_heads), repeat_kv(v, self.n_heads), (k, v)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, s, _ = y.shape
        return y.transpose(1, 2).reshape(b, s, self.d_model)  # concat of the heads, [B, S, d]

    def forward(
        self,
        x: torch.Tensor,
        past: Optional[KV] = None,
        mask: Optional[torch.Tensor] = None,
        key_mask: Optional[torch.Tensor] = None,
        rope: Optional[tuple] = None,
    ) -> tuple[torch.Tensor, KV]:
        """mask: [B|1, 1, S, T] bool (None: the plain causal square; with a window it is always given);
        key_mask: [B, T] 1/0, the padding part of it alone (a fused kernel takes it with the causal
        rule built in); rope: (cos, sin) [B, 1, S, h/2]."""
        qkv = self.qkv_proj(
            x
        )  # [B, S, d + 2 N_kv h] = [Q | K | V]; head i of Q is columns [i*h, (i+1)*h)
        # slices, not split(): Split-18 is missing from some ONNX converters
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        q, k, v = qkv[..., :d], qkv[..., d : d + kv], qkv[..., d + kv :]
        if rope is not None:
            # rotated in [B, S, N, h], the layout the fused kernels take, and back
            b, s, _ = q.shape
            turn = lambda t: rotate(self.heads(t), *rope).transpose(1, 2).reshape(b, s, -1)
            q, k = turn(q), turn(k)
        y, present = self.route(self, q, k, v, past, mask, key_mask)
        return self.out_proj(y), present


class MLP(nn.Module):
    """down(GELU(up(x))), or the gated form down(SiLU(gate(x)) * up(x)) (SwiGLU, Llama's)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.approximate, bias = cfg.gelu_approximate, cfg.biases == "all"
        if cfg.mlp == "gated-silu":
            self.gate_proj = Projection(cfg.d_model, cfg.d_mlp, bias)
        self.up_proj = Projection(cfg.d_model, cfg.d_mlp, bias)
        self.down_proj = Projection(cfg.d_mlp, cfg.d_model, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_proj"):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate=self.approximate))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp_input, self.mlp_residual = cfg.mlp_input, cfg.mlp_residual
        self.pre_attn_ln = make_norm(cfg)
        self.attn = Attention(cfg)
        self.pre_mlp_ln = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        past: Optional[KV] = None,
        mask: Optional[torch.Tensor] = None,
        key_mask: Optional[torch.Tensor] = None,
        rope: Optional[tuple] = None,
    ) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.pre_attn_ln(x), past, mask, key_mask, rope)
        t = x + a
        streams = {"x": x, "t": t}
        m = self.mlp(self.pre_mlp_ln(streams[self.mlp_input]))
        return (m if self.mlp_residual is None else streams[self.mlp_residual] + m), present


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.positional_embeddings = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.h = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        self.final_ln = make_norm(cfg)


class GPT(nn.Module):
    """input_ids LongTensor [B, S] (+ optional cache) -> logits [B, S, V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)
        if not cfg.tied_head:
            self.lm_head = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))  # [V, d]
        if cfg.positions == "rope":
            # angle of pair i at position p: p * base^(-2i/h), i < h/2
            half = cfg.head_dim // 2
            inv_freq = cfg.rope_base ** (
                -torch.arange(half, dtype=torch.float64) * 2 / cfg.head_dim
            )
            self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        past: Optional[list[KV]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        use_cache: bool = False,
    ):
        """Logits [B, S, V]; with use_cache, also the present cache (past + this block) per layer."""
        b, s = input_ids.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + s, device=input_ids.device).unsqueeze(
                0
            )
        cfg = self.config
        mask = None  # the plain causal square
        if past is not None or attention_mask is not None or cfg.attn_window is not None:
            # key n is visible to the query at position m when n < m + 1 (and m - W < n); built from
            # positions rather than sliced from a stored matrix, whose clamped slice sizes tools
            # cannot prove equal to S
            query_pos = torch.arange(past_len, past_len + s, device=input_ids.device)
            key_pos = torch.arange(past_len + s, device=input_ids.device)
            mask = window_mask(query_pos, key_pos, cfg.attn_window or 0)[None, None]  # [1, 1, S, T]
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, :].bool()  # [B, 1, S, T]
        y = self.transformer.word_embeddings(input_ids)
        rope = None
        if cfg.positions == "learned":
            y = y + self.transformer.positional_embeddings(position_ids)
        else:
            angles = position_ids.to(torch.float32)[..., None] * self.inv_freq  # [B|1, S, h/2]
            rope = (angles.cos()[:, None], angles.sin()[:, None])
        presents = []
        for i, layer in enumerate(self.transformer.h):
            y, present = layer(y, None if past is None else past[i], mask, attention_mask, rope)
            presents.append(present)
        y = self.transformer.final_ln(y)
        head = self.lm_head if hasattr(self, "lm_head") else self.transformer.word_embeddings.weight
        logits = y @ head.t()  # no bias
        return (logits, presents) if use_cache else logits
