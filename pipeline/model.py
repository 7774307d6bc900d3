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
    """y = x W + b with W stored [in, out], as the spec writes it (GPT-2's Conv1D)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one 2-D GEMM with the bias fused (addmm), whatever the leading dims
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _masked_value(dtype: torch.dtype) -> float:
    # the dtype's lowest finite value, not -inf: a row with every key masked (a left-pad query)
    # then gets a uniform softmax instead of NaN, and NaN never reaches the real tokens
    return torch.finfo(dtype).min


def sdpa_attention(q, k, v, mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """Eager attention: q [B, H, S, h], k/v [B, H, T, h] -> [B, H, S, h]. mask None means the
    plain causal square (T == S), where torch's fused kernel skips the masked half."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, _masked_value(q.dtype))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _masked_softmax_attention(q, k, v, mask: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, _masked_value(q.dtype))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# Query-blocked causal attention splits the queries into this many blocks; block i attends only
# the keys of blocks <= i; a fixed count keeps the graph static (blocks past S are empty).
QUERY_BLOCKS = 8


def explicit_attention(q, k, v, mask: Optional[torch.Tensor], scale: float, causal: torch.Tensor = None):
    """The same function in plain ops (MatMul, Where, Softmax) for the portable export: the causal
    square is a slice of a stored boolean matrix, as GPT-2's own `bias` buffer, never Trilu."""
    if mask is None:
        s = q.shape[-2]
        mask = causal[:s, :s]
    return _masked_softmax_attention(q, k, v, mask, scale)


def blocked_attention(q, k, v, scale: float) -> torch.Tensor:
    """Causal attention on [B, H, S, h] with the queries in QUERY_BLOCKS blocks: block i meets only
    the keys up to its own end, so about half the square is never computed. A candidate route
    measured by `pipeline bench --mode attention`; no artifact uses it: GroupQueryAttention was
    faster (docs/bench-attention.json), and tract cannot prove that the clamped blocks of the
    standard-op form add up to S rows, so the portable file keeps the one masked square."""
    s = q.shape[-2]
    block = (s + QUERY_BLOCKS - 1) // QUERY_BLOCKS
    outputs = []
    for i in range(QUERY_BLOCKS):
        start, end = min(i * block, s), min((i + 1) * block, s)
        query_pos = torch.arange(start, end, device=q.device)
        key_pos = torch.arange(end, device=q.device)
        visible = key_pos[None, :] < query_pos[:, None] + 1
        outputs.append(_masked_softmax_attention(q[..., start:end, :], k[..., :end, :], v[..., :end, :], visible,
                                                 scale))
    return torch.cat(outputs, dim=-2)


@torch.library.custom_op("pipeline::blocked_causal_attention", mutates_args=())
def blocked_causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int,
                                scale: float) -> torch.Tensor:
    """blocked_attention on [B, S, d] as one opaque op: the exporter writes its ONNX form directly
    (export/fused.py) instead of tracing eight symbolic slices per layer, which took ten times
    longer than the rest of the export."""
    b, s, d = q.shape
    heads = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    y = blocked_attention(heads(q), heads(k), heads(v), scale)
    return y.transpose(1, 2).reshape(b, s, d)


@blocked_causal_attention_op.register_fake
def _(q, k, v, n_heads, scale):
    return torch.empty_like(q)


def window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int) -> torch.Tensor:
    """Key n visible to query m: n <= m, and m - window < n when window > 0 (0: no window)."""
    visible = key_pos[None, :] < query_pos[:, None] + 1
    if window:
        visible = visible & (key_pos[None, :] > query_pos[:, None] - window)
    return visible


def repeat_kv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, N_kv, T, h] -> [B, N_h, T, h]: query head i reads key/value head i // (N_h / N_kv)."""
    return t if t.shape[1] == n_heads else t.repeat_interleave(n_heads // t.shape[1], dim=1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv_heads: int,
                     window: int, scale: float) -> torch.Tensor:
    """Causal attention on q [B, S, d], k/v [B, S, N_kv * h] (heads are column blocks) -> [B, S, d];
    window 0: every earlier key."""
    b, s, d = q.shape
    h = d // n_heads
    heads = lambda t, n: t.view(b, s, n, h).transpose(1, 2)  # [B, n, S, h]
    q, k, v = heads(q, n_heads), repeat_kv(heads(k, n_kv_heads), n_heads), repeat_kv(heads(v, n_kv_heads), n_heads)
    if window and s > window:
        pos = torch.arange(s, device=q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(pos, pos, window), scale=scale)
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return y.transpose(1, 2).reshape(b, s, d)


@torch.library.custom_op("pipeline::causal_attention", mutates_args=())
def causal_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, n_kv_heads: int,
                        window: int, scale: float) -> torch.Tensor:
    """The same function as one opaque op, so an exporter can map it to a fused attention kernel."""
    return causal_attention(q, k, v, n_heads, n_kv_heads, window, scale)


@causal_attention_op.register_fake
def _(q, k, v, n_heads, n_kv_heads, window, scale):
    return torch.empty_like(q)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half layout (GPT-NeoX, Llama): for i < h/2 the pair (x_i, x_{i+h/2})
    turns by its angle. x [B, H, S, h]; cos, sin [B, 1, S, h/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def cached_attention(q, k, v, past_k, past_v, key_mask, n_heads: int, scale: float):
    """Attention of new queries over past + new keys: q, k, v [B, S, d], past_k/v [B, N_h, P, h],
    key_mask [B, P + S] (1: a token, 0: padding). Query i sits at position P + i and sees the keys
    up to it that are not padding. Returns y [B, S, d] and the present cache [B, N_h, P + S, h]."""
    b, s, d = q.shape
    heads = lambda t: t.view(b, s, n_heads, d // n_heads).transpose(1, 2)
    k, v = torch.cat([past_k, heads(k)], dim=2), torch.cat([past_v, heads(v)], dim=2)
    total = k.shape[2]
    causal = torch.ones(s, total, dtype=torch.bool).tril(total - s)  # aligned at the end
    mask = causal[None, None] & key_mask[:, None, None, :].bool()
    bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, _masked_value(q.dtype))
    y = F.scaled_dot_product_attention(heads(q), k, v, attn_mask=bias, scale=scale)
    return y.transpose(1, 2).reshape(b, s, d), k, v


@torch.library.custom_op("pipeline::cached_attention", mutates_args=())
def cached_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                        past_v: torch.Tensor, key_mask: torch.Tensor, n_heads: int,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cached_attention as one opaque op, for ONNX Runtime's MultiHeadAttention with past."""
    y, pk, pv = cached_attention(q, k, v, past_k, past_v, key_mask, n_heads, scale)
    return y, pk.contiguous(), pv.contiguous()


@cached_attention_op.register_fake
def _(q, k, v, past_k, past_v, key_mask, n_heads, scale):
    b, s, _ = q.shape
    present = past_k.new_empty(b, past_k.shape[1], past_k.shape[2] + s, past_k.shape[3])
    return torch.empty_like(q), present, present.clone()


# how attention is computed: the same function three ways (the exports pick theirs)
ATTENTION_MODES = ("sdpa", "explicit", "fused-op")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_model, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.head_dim
        self.window = cfg.attn_window or 0
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn else 1.0
        self.qkv_proj = Projection(cfg.d_model, cfg.qkv_width)
        self.out_proj = Projection(cfg.d_model, cfg.d_model)
        self.mode = "sdpa"
        self.causal: Optional[torch.Tensor] = None  # set by the model: its [S_max, S_max] causal matrix
        # MultiHeadAttention (the ORT decoder's kernel) has one head count and no window
        self.fused_cache_ok = cfg.kv_heads == cfg.n_heads and cfg.attn_window is None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, N, S, h]

    def _split(self, qkv: torch.Tensor):
        # slices, not split(): Split-18 is missing from some ONNX converters
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        return qkv[..., :d], qkv[..., d:d + kv], qkv[..., d + kv:]

    def forward(self, x: torch.Tensor, past: Optional[KV] = None, mask: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None, rope: Optional[tuple] = None) -> tuple[torch.Tensor, KV]:
        """mask: [B|1, 1, S, T] bool (None: the plain causal square; with a window it is always given,
        and the fused op, which applies the window itself, ignores it); key_mask: [B, T] 1/0, the
        padding part of it alone (the fused op takes it with the causal rule built in); rope: (cos,
        sin) [B, 1, S, h/2]."""
        qkv = self.qkv_proj(x)  # [B, S, d + 2 N_kv h] = [Q | K | V]; head i of Q is columns [i*h, (i+1)*h)
        q, k, v = self._split(qkv)
        if rope is not None:
            # rotated in [B, S, N, h], the layout the fused ops take, and back
            b, s, _ = q.shape
            turn = lambda t: rotate(self._heads(t), *rope).transpose(1, 2).reshape(b, s, -1)
            q, k = turn(q), turn(k)
        if self.mode == "fused-op" and past is None and key_mask is None:
            y = causal_attention_op(q, k, v, self.n_heads, self.n_kv_heads, self.window, self.scale)
            return self.out_proj(y), (self._heads(k), self._heads(v))
        if self.mode == "fused-op" and self.fused_cache_ok:
            if past is None:
                empty = q.new_zeros(q.shape[0], self.n_heads, 0, self.head_dim)
                past = (empty, empty)
            if key_mask is None:
                key_mask = torch.ones(q.shape[0], past[0].shape[2] + q.shape[1], dtype=torch.int32)
            y, k, v = cached_attention_op(q, k, v, past[0], past[1], key_mask.to(torch.int32), self.n_heads,
                                          self.scale)
            return self.out_proj(y), (k, v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        present = (k, v)  # the cache keeps N_kv heads
        k, v = repeat_kv(k, self.n_heads), repeat_kv(v, self.n_heads)
        if self.mode == "sdpa":
            y = sdpa_attention(q, k, v, mask, self.scale)
        else:
            y = explicit_attention(q, k, v, mask, self.scale, self.causal)
        b, _, s, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, s, self.d_model)), present


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

    def forward(self, x: torch.Tensor, past: Optional[KV] = None, mask: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None, rope: Optional[tuple] = None) -> tuple[torch.Tensor, KV]:
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
        self.final_ln = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)


class GPT(nn.Module):
    """input_ids LongTensor [B, S] (+ optional cache) -> logits [B, S, V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = Transformer(cfg)
        n = cfg.max_seq_len
        # query m sees key n <= m; not part of the state dict (it is not a weight)
        self.register_buffer("causal", torch.ones(n, n, dtype=torch.bool).tril(), persistent=False)
        if cfg.positions == "rope":
            # angle of pair i at position p: p * base^(-2i/h), i < h/2
            half = cfg.head_dim // 2
            inv_freq = cfg.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / cfg.head_dim)
            self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        for layer in self.transformer.h:
            layer.attn.causal = self.causal

    def set_attention_mode(self, mode: str) -> "GPT":
        """sdpa (eager), explicit (standard ops, for the portable export) or fused-op (one opaque
        op that the ORT-optimised export maps to a fused kernel)."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {mode!r}; choose {', '.join(ATTENTION_MODES)}")
        for layer in self.transformer.h:
            layer.attn.mode = mode
            layer.attn.causal = self.causal
        return self

    def _apply(self, fn, recurse=True):  # keep the layers' view of the causal buffer after .to()
        out = super()._apply(fn, recurse)
        for layer in self.transformer.h:
            layer.attn.causal = self.causal
        return out

    def forward(self, input_ids: torch.Tensor, past: Optional[list[KV]] = None,
                attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                use_cache: bool = False):
        """Logits [B, S, V]; with use_cache, also the present cache (past + this block) per layer."""
        b, s = input_ids.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + s, device=input_ids.device).unsqueeze(0)
        cfg = self.config
        mask = None  # the plain causal square
        if past is not None or attention_mask is not None or cfg.attn_window is not None:
            # key n is visible to the query at position m when n < m + 1 (and m - W < n); built from
            # positions rather than sliced from `causal`, whose clamped slice sizes tools cannot
            # prove equal to S
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
        logits = y @ self.transformer.word_embeddings.weight.t()  # tied LM head, no bias
        return (logits, presents) if use_cache else logits
