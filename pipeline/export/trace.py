"""Tracing: a torch model -> an ONNX ModelProto with the dynamo exporter, made portable.

The full forward takes input_ids int64 [B, seq] and returns logits float32 [B, seq, V]; the
decoder takes the cache as 2 * N_l tensors (decoder_io). Every batch and sequence axis is
dynamic, named as the I/O spec names it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch

from .io_spec import BATCH, SEQUENCE, decoder_io, full_forward_io, past_names
from .routes import attention_route


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs about optional torchvision ops and deprecations; none of it is ours."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class DecoderGraph(torch.nn.Module):
    """The model with the decoder's flat I/O (decoder_io): the cache travels as 2 * N_l tensors."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        logits, presents = self.model(
            input_ids, [tuple(p) for p in past], attention_mask, position_ids, use_cache=True
        )
        return logits, [list(p) for p in presents]


def _export(module, args, io, dynamic_shapes, opset: int, extra: dict) -> onnx.ModelProto:
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=[t.name for t in io.inputs],
            output_names=[t.name for t in io.outputs],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
            **extra,
        )
    return make_portable(program.model_proto, io)


def trace_to_onnx(
    model: torch.nn.Module, opset: int, fused_attention: bool = False, decoder: bool = False
) -> onnx.ModelProto:
    """The full forward (full_forward_io) or the decoder with past (decoder_io) as ONNX, every
    batch and sequence axis dynamic."""
    cfg = model.config
    extra = {}
    if fused_attention:
        from .fused import translation_table

        extra["custom_translation_table"] = translation_table()
    with attention_route(model, "fused" if fused_attention else "explicit"):
        if not decoder:
            # batch 2 in the example: torch.export specialises a size-1 dim to the constant 1
            dims = {
                BATCH: torch.export.Dim(BATCH, min=1, max=4096),
                SEQUENCE: torch.export.Dim(SEQUENCE, min=1, max=cfg.max_seq_len),
            }
            io = full_forward_io(cfg)
            shapes = {
                "input_ids": {
                    i: dims[a] for i, a in enumerate(io.inputs[0].axes) if isinstance(a, str)
                }
            }
            return _export(
                model, (torch.zeros(2, 24, dtype=torch.int64),), io, shapes, opset, extra
            )
        # past, total and sequence lengths are related (total = past + sequence), which named
        # Dims cannot say; AUTO lets the exporter infer it, and make_portable names the axes
        b, s, p = 2, 3, 5
        auto = torch.export.Dim.AUTO
        past = [
            [torch.zeros(b, cfg.kv_heads, p, cfg.head_dim) for _ in range(2)]
            for _ in range(cfg.n_layers)
        ]
        args = (
            torch.zeros(b, s, dtype=torch.int64),
            torch.ones(b, p + s, dtype=torch.int64),
            torch.arange(p, p + s).expand(b, s).contiguous(),
            past,
        )
        io = decoder_io(cfg)
        dynamic = {  # every axis the I/O spec names, per input
            t.name: {i: auto for i, axis in enumerate(t.axes) if isinstance(axis, str)}
            for t in io.inputs
        }
        names = past_names(cfg)
        shapes = {
            "input_ids": dynamic["input_ids"],
            "attention_mask": dynamic["attention_mask"],
            "position_ids": dynamic["position_ids"],
            "past": [[dynamic[k], dynamic[v]] for k, v in zip(names[::2], names[1::2])],
        }
        return _export(DecoderGraph(model), args, io, shapes, opset, extra)


def drop_unused_opsets(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove opset imports of domains no node uses (ORT's optimiser declares eight of them)."""
    used = {n.domain for n in proto.graph.node} | {
        n.domain for f in proto.functions for n in f.node
    }
    used |= {f.domain for f in proto.functions}
    keep = [o for o in proto.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    return proto


def make_portable(proto: onnx.ModelProto, io) -> onnx.ModelProto:
    """Small rewrites so that more ONNX tools read the file, none changing what it computes:
    - Reshape's allowzero=1 is dropped (some converters refuse it): our shapes never hold a 0,
      so allowzero cannot change the result;
    - opset imports that no node uses are removed;
    - the graph's inputs and outputs carry the axis names of the I/O spec."""
    for node in proto.graph.node:
        if node.op_type == "Reshape":
            keep = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(keep)
    drop_unused_opsets(proto)
    renamed: dict[str, str] = {}
    for values, specs in ((proto.graph.input, io.inputs), (proto.graph.output, io.outputs)):
        for value, spec in zip(values, specs):
            dims = value.type.tensor_type.shape.dim
            for dim, axis in zip(dims, spec.axes):
                if isinstance(axis, str):
                    if dim.HasField("dim_param"):
                        renamed[dim.dim_param] = axis
                    dim.dim_param = axis
            del value.metadata_props[:]
    # the exporter's own symbols (s26, "s62 + s70") in the intermediate shapes: renamed where they
    # are an I/O axis, else left unknown; a tool that unifies shapes (tract) rejects a mix
    for value in proto.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                if dim.dim_param in renamed:
                    dim.dim_param = renamed[dim.dim_param]
                else:
                    dim.Clear()
    return proto
