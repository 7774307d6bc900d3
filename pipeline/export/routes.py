"""Attention routes for the exporters: the same function as model.py's attention, written the way
each artifact needs it.

- explicit: plain MatMul/Where/Softmax with the causal square sliced from a stored boolean matrix
  (as GPT-2's own `bias` buffer, never Trilu): the portable file, which every ONNX tool reads;
- fused: one opaque op per attention (torch.library custom ops below), which export/fused.py
  translates to ONNX Runtime's GroupQueryAttention (causal, or with a cache).

`attention_route(model, name)` sets a route on every layer for the length of an export.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from ..model import masked_value, repeat_kv, sdpa_route, window_mask


def _causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention on q [B, S, d], k/v [B, S, N_kv * h] (heads are column blocks) -> [B, S, d];
    window 0: every earlier key."""
    b, s, d = q.shape
    h = d // n_heads
    heads = lambda t, n: t.view(b, s, n, h).transpose(1, 2)  # [B, n, S, h]
    q, k, v = (
        heads(q, n_heads),
        repeat_kv(heads(k, n_kv_heads), n_heads),
        repeat_kv(heads(v, n_kv_heads), n_heads),
    )
    if window and s > window:
        pos = torch.arange(s, device=q.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=window_mask(pos, pos, window), scale=scale
        )
    else:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return y.transpose(1, 2).reshape(b, s, d)


@torch.library.custom_op("pipeline::causal_attention", mutates_args=())
def causal_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention as one opaque op, so the exporter can map it to a fused attention kernel."""
    return _causal_attention(q, k, v, n_heads, n_kv_heads, window, scale)


@causal_attention_op.register_fake
def _(q, k, v, n_heads, n_kv_heads, window, scale):
    return torch.empty_like(q)


def _cached_attention(
    q, k, v, past_k, past_v, key_mask, n_heads: int, n_kv_heads: int, window: int, scale: float
):
    """Attention with a cache, each row's tokens from position 0 (padding, if any, on the right):
    q [B, S, d], k, v [B, S, N_kv h], past_k/v [B, N_kv, P, h], key_mask [B, T] whose row sum L_b
    counts the row's tokens including the S new ones. The new keys go to positions L_b - S ..
    L_b - 1 of the row's cache (0 .. S - 1 for the first prompt, S == T), where query i sits and
    sees the keys up to it (within the window). Returns y [B, S, d] and the present cache
    [B, N_kv, max(T, P), h]: GroupQueryAttention's contract, which also runs with past and
    present in one buffer (P = the buffer's length) and writes the new keys in place."""
    b, s, d = q.shape
    h = d // n_heads
    heads = lambda t, n: t.view(b, s, n, h).transpose(1, 2)
    q, k, v = heads(q, n_heads), heads(k, n_kv_heads), heads(v, n_kv_heads)
    total, past = key_mask.shape[1], past_k.shape[2]
    lengths = key_mask.sum(1).tolist()
    present_k = past_k.new_zeros(b, n_kv_heads, max(total, past), h)
    present_v = torch.zeros_like(present_k)
    rows = []
    for r in range(b):
        start = 0 if s == total else int(lengths[r]) - s
        present_k[r, :, :start], present_v[r, :, :start] = (
            past_k[r, :, :start],
            past_v[r, :, :start],
        )
        present_k[r, :, start : start + s], present_v[r, :, start : start + s] = k[r], v[r]
        keys = repeat_kv(present_k[r : r + 1, :, : start + s], n_heads)
        values = repeat_kv(present_v[r : r + 1, :, : start + s], n_heads)
        visible = window_mask(torch.arange(start, start + s), torch.arange(start + s), window)
        rows.append(
            F.scaled_dot_product_attention(
                q[r : r + 1], keys, values, attn_mask=visible, scale=scale
            )
        )
    return torch.cat(rows).transpose(1, 2).reshape(b, s, d), present_k, present_v


@torch.library.custom_op("pipeline::cached_attention", mutates_args=())
def cached_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    key_mask: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    window: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention with a cache as one opaque op, for ONNX Runtime's GroupQueryAttention."""
    return _cached_attention(q, k, v, past_k, past_v, key_mask, n_heads, n_kv_heads, window, scale)


@cached_attention_op.register_fake
def _(q, k, v, past_k, past_v, key_mask, n_heads, n_kv_heads, window, scale):
    b, s, _ = q.shape  # the present's length: T, as the declared I/O says (P + S in that contract)
    present = past_k.new_empty(b, past_k.shape[1], key_mask.shape[1], past_k.shape[3])
    return torch.empty_like(q), present, present.clone()


def explicit_attention(attn, q, k, v, past, mask, causal: Optional[torch.Tensor] = None):
    """Attention in standard ops: q, k, v [B, S, d or N_kv h] -> ([B, S, d], present). mask None
    means the plain causal square, sliced from `causal`."""
    q, k, v, present = attn.with_cache(q, k, v, past)
    if mask is None:
        s = q.shape[-2]
        mask = causal[:s, :s]
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    scores = scores.masked_fill(~mask, masked_value(q.dtype))
    return attn.merge(torch.matmul(torch.softmax(scores, dim=-1), v)), present


def explicit_route(causal: torch.Tensor):
    """The portable route: standard ops only; the plain causal square is a slice of `causal`."""
    return lambda attn, q, k, v, past, mask, key_mask: explicit_attention(
        attn, q, k, v, past, mask, causal
    )


def fused_route(attn, q, k, v, past, mask, key_mask):
    """The ORT-optimised route: one fused op per attention, GroupQueryAttention for every variant
    (it takes the key/value heads and the window): without a cache the causal form, with one the
    cached form (right-padded rows, see _cached_attention)."""
    if past is None and key_mask is None:
        y = causal_attention_op(q, k, v, attn.n_heads, attn.n_kv_heads, attn.window, attn.scale)
        return y, (attn.heads(k), attn.heads(v))
    if past is None:
        empty = q.new_zeros(q.shape[0], attn.n_kv_heads, 0, attn.head_dim)
        past = (empty, empty)
    if key_mask is None:
        key_mask = torch.ones(q.shape[0], past[0].shape[2] + q.shape[1], dtype=torch.int32)
    y, k, v = cached_attention_op(
        q,
        k,
        v,
        past[0],
        past[1],
        key_mask.to(torch.int32),
        attn.n_heads,
        attn.n_kv_heads,
        attn.window or 0,
        attn.scale,
    )
    return y, (k, v)


@contextlib.contextmanager
def attention_route(model, name: Optional[str]):
    """Every layer of the model attends by the named route ("explicit", "fused"; None: the
    model's own SDPA) inside the block."""
    if name not in (None, "explicit", "fused"):
        raise ValueError(f"attention route {name!r}; choose explicit or fused")
    if name == "explicit":
        # the causal square is the explicit graph's stored constant, S_max^2 bytes: made only for
        # that route (made for every route, it once took 6.7 GB at n_positions 46500)
        n = model.config.max_seq_len
        route = explicit_route(torch.ones(n, n, dtype=torch.bool).tril())
    else:
        route = fused_route if name == "fused" else sdpa_route
    layers = [layer.attn for layer in model.transformer.h]
    saved = [a.route for a in layers]
    for a in layers:
        a.route = route
    try:
        yield model
    finally:
        for a, route in zip(layers, saved):
            a.route = route
