"""A small float64 numpy implementation of the spec, written from the formulas, independent of
pipeline.model. It reads the supplied state-dict keys directly and spells each variant's layer
formula out, so a mistake in the variant registry would show up as a mismatch."""

from __future__ import annotations

import math

import numpy as np

D, N_HEADS, N_LAYERS = 256, 2, 3


def erf(x):
    return np.vectorize(math.erf)(x)


def gelu_exact(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased, as torch.nn.LayerNorm
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def rotary(x, positions, base=10000.0):
    """The issue's formula: for i < h/2 the pair (x_i, x_{i+h/2}) at position p turns by
    p * base^(-2i/h). x [S, h]."""
    h = x.shape[-1]
    half = h // 2
    out = x.copy()
    for i in range(half):
        angle = positions * base ** (-2.0 * i / h)
        c, s_ = np.cos(angle), np.sin(angle)
        out[:, i] = x[:, i] * c - x[:, i + half] * s_
        out[:, i + half] = x[:, i + half] * c + x[:, i] * s_
    return out


def attention(x, w_qkv, b_qkv, w_o, b_o, scale, kv_heads=N_HEADS, window=None, rope=False):
    """kv_heads < N_HEADS: query head i uses the K/V head of its group, whose projection is the
    mean of the group's per-head projections in the supplied weights; window W: query m sees keys
    m - W < n <= m."""
    s, d = x.shape
    h = d // N_HEADS
    group = N_HEADS // kv_heads
    qkv = x @ w_qkv + b_qkv
    positions = np.arange(s, dtype=np.float64)
    heads = []
    for i in range(N_HEADS):
        q = qkv[:, i * h : (i + 1) * h]
        members = range((i // group) * group, (i // group + 1) * group)
        k = np.mean([qkv[:, d + j * h : d + (j + 1) * h] for j in members], axis=0)
        v = np.mean([qkv[:, 2 * d + j * h : 2 * d + (j + 1) * h] for j in members], axis=0)
        if rope:
            q, k = rotary(q, positions), rotary(k, positions)
        y = q @ k.T
        if scale:
            y = y / math.sqrt(h)
        m, n = np.indices((s, s))
        visible = n <= m  # query m sees keys n <= m
        if window is not None:
            visible &= n > m - window
        y = np.where(visible, y, -np.inf)
        y = np.exp(y - y.max(-1, keepdims=True))
        y = y / y.sum(-1, keepdims=True)
        heads.append(y @ v)
    return np.concatenate(heads, axis=-1) @ w_o + b_o


# Each variant's layer, as the spec writes it. attn(x) and mlp(x) include their LayerNorm.
LAYERS = {
    "baseline": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "ln-eps": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "no-scale": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "gelu-tanh": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "input-residual": lambda x, attn, mlp: x + mlp(x + attn(x)),
    "no-mlp-residual": lambda x, attn, mlp: mlp(x + attn(x)),
    "palm": lambda x, attn, mlp: x + attn(x) + mlp(x),
    "rope": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "gqa": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "sliding-window": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
    "rope-gqa-window": lambda x, attn, mlp: (lambda t: t + mlp(t))(x + attn(x)),
}
# the attention family: (key/value heads, window, rotary positions)
ATTENTION = {
    "rope": (N_HEADS, None, True),
    "gqa": (1, None, False),
    "sliding-window": (N_HEADS, 256, False),
    "rope-gqa-window": (1, 256, True),
}
EPS = {"ln-eps": 1e-4}
SCALE = {"no-scale": False}
ACT = {"gelu-tanh": gelu_tanh}


def forward(state_dict: dict, ids, variant: str = "baseline") -> np.ndarray:
    """ids: sequence of ints; returns float64 logits [S, V]."""
    w = {
        k: v.detach()
        .double()
        .numpy()
        .reshape(v.shape[-1] if v.dim() == 2 and v.shape[0] == 1 else v.shape)
        for k, v in state_dict.items()
    }
    eps, scale, act = EPS.get(variant, 1e-5), SCALE.get(variant, True), ACT.get(variant, gelu_exact)
    ids = np.asarray(ids).reshape(-1)
    kv_heads, window, rope = ATTENTION.get(variant, (N_HEADS, None, False))
    x = w["transformer.word_embeddings.weight"][ids]
    if not rope:
        x = x + w["transformer.positional_embeddings.weight"][: len(ids)]
    for i in range(N_LAYERS):
        p = f"transformer.h.{i}."

        def attn(z, p=p):
            z = layer_norm(z, w[p + "pre_attn_ln.weight"], w[p + "pre_attn_ln.bias"], eps)
            return attention(
                z,
                w[p + "attn.qkv_proj.weight"],
                w[p + "attn.qkv_proj.bias"],
                w[p + "attn.out_proj.weight"],
                w[p + "attn.out_proj.bias"],
                scale,
                kv_heads,
                window,
                rope,
            )

        def mlp(z, p=p):
            z = layer_norm(z, w[p + "pre_mlp_ln.weight"], w[p + "pre_mlp_ln.bias"], eps)
            u = act(z @ w[p + "mlp.up_proj.weight"] + w[p + "mlp.up_proj.bias"])
            return u @ w[p + "mlp.down_proj.weight"] + w[p + "mlp.down_proj.bias"]

        x = LAYERS[variant](x, attn, mlp)
    x = layer_norm(x, w["transformer.final_ln.weight"], w["transformer.final_ln.bias"], eps)
    return x @ w["lm_head.weight"].T
