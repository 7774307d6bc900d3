"""The registry of artifact flavours: which graph, traced how, rewritten by what, named how.

Import-light: the rewrites are functions here that import ONNX Runtime only when called.
Adding a flavour is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


def ort_optimize(proto, dest: Path) -> None:
    """Apply ORT's graph fusions once and save the result, so sessions start from the fused graph.
    EXTENDED, not ALL: ALL adds layout transforms specific to this machine's CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def quantize_int8(proto, dest: Path) -> None:
    """Dynamic int8 quantisation of every weight MatMul/Gemm (activations quantised per call):
    int8 dot products run on the CPU's VNNI instructions where it has them."""
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save_model(proto, str(src))
        logging.disable(
            logging.WARNING
        )  # it advises pre-processing on the root logger, for image models
        try:
            quantize_dynamic(
                str(src),
                str(dest),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        finally:
            logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class Flavour:
    suffix: str
    runtime: str  # what can run it, recorded in the file's metadata
    decoder: bool = False  # the graph with a KV cache (decoder_io), else the full forward
    fused: bool = False  # attention through the fused-kernel op
    rewrite: Optional[Callable] = None  # after export: rewrite(proto, dest) writes the final file
    # warm export time at the spec's size on this machine (1 thread), measured; a parallel export
    # hands out the slow ones first, so the cheap ones fill the end
    export_s: float = 3.0
    portable: bool = False  # loads in any ONNX tool (check-tools runs it everywhere)


_PORTABLE = "any ONNX runtime (standard ai.onnx ops only, opset 18)"
_ORT_ONLY = (
    "ONNX Runtime only (com.microsoft contrib ops: GroupQueryAttention, Gelu, MultiHeadAttention)"
)
FLAVOURS: dict[str, Flavour] = {
    "portable": Flavour(".onnx", _PORTABLE, export_s=3.5, portable=True),
    "optimized": Flavour(
        ".ort-opt.onnx", _ORT_ONLY, fused=True, rewrite=ort_optimize, export_s=2.2
    ),
    "int8": Flavour(
        ".int8.onnx",
        _ORT_ONLY + ", dynamic int8 quantisation",
        fused=True,
        rewrite=quantize_int8,
        export_s=2.5,
    ),
    "decoder": Flavour(".decoder.onnx", _PORTABLE, decoder=True, export_s=5.1, portable=True),
    "decoder-optimized": Flavour(
        ".decoder.ort-opt.onnx",
        _ORT_ONLY,
        decoder=True,
        fused=True,
        rewrite=ort_optimize,
        export_s=3.0,
    ),
}
