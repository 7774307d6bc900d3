"""Translations of the model's opaque ops for the ORT-optimised export.

- causal attention: com.microsoft.GroupQueryAttention, the fastest exact route measured at every
  length and thread count but the shortest (docs/bench-attention.json; the rest are within 0.01 ms
  there);
- attention with a cache (the decoder): GroupQueryAttention too, each row's length from the
  attention mask (right-padded rows), past and present one buffer when the caller binds them so;
- GELU: com.microsoft.Gelu / FastGelu, one kernel instead of five elementwise ops.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op

MICROSOFT = onnxscript.values.Opset("com.microsoft", 1)

_P = OpSchema.FormalParameter
# GroupQueryAttention, the inputs up to total_sequence_length and its three outputs
_GQA_SCHEMA = OpSchema(
    "GroupQueryAttention",
    "com.microsoft",
    1,
    inputs=[
        _P("query", "T"),
        _P("key", "T"),
        _P("value", "T"),
        _P("past_key", "T", param_option=OpSchema.FormalParameterOption.Optional),
        _P("past_value", "T", param_option=OpSchema.FormalParameterOption.Optional),
        _P("seqlens_k", "M"),
        _P("total_sequence_length", "M"),
    ],
    outputs=[_P("output", "T"), _P("present_key", "T"), _P("present_value", "T")],
    type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
    attributes=[
        OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
        OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "key/value heads"),
        OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale"),
        OpSchema.Attribute("local_window_size", OpSchema.AttrType.INT, "-1: no window"),
    ],
)
GroupQueryAttention = onnxscript.values.Op(MICROSOFT, "GroupQueryAttention", _GQA_SCHEMA)


def causal_gqa(q, k, v, n_heads: int, n_kv_heads: int, window: int, scale: float):
    """q [B, S, d], k, v [B, S, N_kv h] -> [B, S, d] through GroupQueryAttention, which takes the
    key/value head count and the window itself. Its local_window_size W lets query m see keys
    m - W < n <= m, the model's own convention (ORT 1.32; a test checks it). Every row holds S
    tokens: seqlens_k = S - 1. The present outputs stay unnamed: measured faster that way."""
    shape = op.Shape(q)
    batch, seq = op.Slice(shape, [0], [1]), op.Slice(shape, [1], [2])
    total = op.Cast(op.Squeeze(seq, [0]), to=onnx.TensorProto.INT32)
    seqlens_k = op.Expand(op.Cast(op.Sub(seq, [1]), to=onnx.TensorProto.INT32), batch)
    y, _, _ = GroupQueryAttention(
        q,
        k,
        v,
        None,
        None,
        seqlens_k,
        total,
        num_heads=n_heads,
        kv_num_heads=n_kv_heads,
        scale=scale,
        local_window_size=window if window else -1,
    )
    return y


_GELU_SCHEMAS = {
    name: OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=[_P("X", "T")],
        outputs=[_P("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], "")],
    )
    for name in ("Gelu", "FastGelu")
}
Gelu = onnxscript.values.Op(MICROSOFT, "Gelu", _GELU_SCHEMAS["Gelu"])  # exact: x * Phi(x)
FastGelu = onnxscript.values.Op(MICROSOFT, "FastGelu", _GELU_SCHEMAS["FastGelu"])  # the tanh form


def fused_gelu(x, approximate: str = "none"):
    """GELU as one ORT kernel instead of the exporter's Div/Erf/Add/Mul/Mul (or tanh) chain, which
    ORT's own fusion does not recognise in this graph."""
    return FastGelu(x) if approximate == "tanh" else Gelu(x)


def _ints(*values):
    return op.Constant(value_ints=list(values))


def cached_gqa(q, k, v, past_k, past_v, key_mask, n_heads, n_kv_heads, window, scale):
    """q [B, S, d], k, v [B, S, N_kv h], past [B, N_kv, P, h], key_mask [B, T] int32 -> output,
    present key and value, through GroupQueryAttention: each row's length (its mask's sum) is
    seqlens_k + 1 and T is total_sequence_length, so rows of different lengths need no left
    padding, and past and present may be one buffer that the kernel writes in place."""
    lengths = op.ReduceSum(key_mask, _ints(1), keepdims=0)
    seqlens_k = op.Sub(lengths, op.CastLike(op.Constant(value_int=1), lengths))
    total = op.Cast(
        op.Squeeze(op.Slice(op.Shape(key_mask), [1], [2]), [0]), to=onnx.TensorProto.INT32
    )
    return GroupQueryAttention(
        q,
        k,
        v,
        past_k,
        past_v,
        seqlens_k,
        total,
        num_heads=n_heads,
        kv_num_heads=n_kv_heads,
        scale=scale,
        local_window_size=window if window else -1,
    )


def translation_table() -> dict:
    import torch

    from . import routes  # noqa: F401  (registers the torch.ops.pipeline ops)

    return {
        torch.ops.pipeline.causal_attention.default: causal_gqa,
        torch.ops.aten.gelu.default: fused_gelu,
        torch.ops.pipeline.cached_attention.default: cached_gqa,
    }
