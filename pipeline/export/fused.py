"""Translation of the model's attention op to ONNX Runtime's fused causal attention kernel.

The portable export decomposes attention into standard ops and builds the causal mask on every
call (Trilu, Equal, Where, a full S x S Softmax). For the ORT-optimised artifact the model routes
attention through the opaque op `pipeline::causal_attention`, translated here to
`com.microsoft.MultiHeadAttention` with unidirectional=1: one kernel, no mask tensor.
"""
from __future__ import annotations

import onnxscript
from onnx.defs import OpSchema

MICROSOFT = onnxscript.values.Opset("com.microsoft", 1)

_P = OpSchema.FormalParameter
# The subset of the contrib op's schema we use (onnx does not ship contrib schemas).
_MHA_SCHEMA = OpSchema(
    "MultiHeadAttention", "com.microsoft", 1,
    inputs=[_P("query", "T"), _P("key", "T"), _P("value", "T")], outputs=[_P("output", "T")],
    type_constraints=[("T", ["tensor(float)"], "")],
    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale"),
                OpSchema.Attribute("unidirectional", OpSchema.AttrType.INT, "1: causal")],
)
MultiHeadAttention = onnxscript.values.Op(MICROSOFT, "MultiHeadAttention", _MHA_SCHEMA)

# the same op with its optional inputs up to past_value and the present outputs
_MHA_PAST_SCHEMA = OpSchema(
    "MultiHeadAttention", "com.microsoft", 1,
    inputs=[_P("query", "T"), _P("key", "T"), _P("value", "T"),
            _P("bias", "T", param_option=OpSchema.FormalParameterOption.Optional),
            _P("key_padding_mask", "M"),
            _P("attention_bias", "T", param_option=OpSchema.FormalParameterOption.Optional),
            _P("past_key", "T"), _P("past_value", "T")],
    outputs=[_P("output", "T"), _P("present_key", "T"), _P("present_value", "T")],
    type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale"),
                OpSchema.Attribute("unidirectional", OpSchema.AttrType.INT, "1: causal")],
)
MultiHeadAttentionWithPast = onnxscript.values.Op(MICROSOFT, "MultiHeadAttention", _MHA_PAST_SCHEMA)


def causal_mha(q, k, v, n_heads: int, scale: float):
    """q, k, v [B, S, d] -> [B, S, d], MultiHeadAttention's own layout."""
    return MultiHeadAttention(q, k, v, num_heads=n_heads, scale=scale, unidirectional=1)


def cached_mha(q, k, v, past_k, past_v, key_mask, n_heads: int, scale: float):
    """q, k, v [B, S, d], past [B, N_h, P, h], key_mask [B, P+S] int32 -> output, present key and
    value. unidirectional=1 aligns the causal rule at the end (query i at position P + i) and the
    2-D key padding mask hides padding: measured 0.12 ms per call at P 512 against 0.16 ms with the
    same rule as an attention bias tensor."""
    return MultiHeadAttentionWithPast(q, k, v, None, key_mask, None, past_k, past_v, num_heads=n_heads, scale=scale,
                                      unidirectional=1)


def translation_table() -> dict:
    import torch

    from .. import model  # noqa: F401  (registers the torch.ops.pipeline ops)

    return {torch.ops.pipeline.causal_attention.default: causal_mha,
            torch.ops.pipeline.cached_attention.default: cached_mha}
