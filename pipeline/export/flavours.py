"""The registry of artifact flavours: which graph, traced how, rewritten by what, named how.

Import-light: the rewrites are functions here that import ONNX Runtime only when called.
Adding a flavour is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# A rewrite reads the traced graph from src (with its external data beside it, when external)
# and writes the flavour's file to dest (a pair too, when external: export/external.py).


def ort_optimize(src: Path, dest: Path, external: bool = False) -> None:
    """Apply ORT's graph fusions once and save the result, so sessions start from the fused graph.
    EXTENDED, not ALL: ALL adds layout transforms specific to this machine's CPU."""
    import onnxruntime as ort

    from .external import data_path

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dest)
    opts.log_severity_level = 3
    if external:
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data_path(dest).name
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


@contextmanager
def quiet_quantization():
    """Around onnxruntime.quantization: its matmul_nbits_quantizer calls logging.basicConfig at
    INFO on import, which would make every later library's INFO records (onnx_ir's passes in the
    next export) print to stderr; and it logs advice meant for image models. Both undone here."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:], root.level = handlers, level


def quantize_int8(src: Path, dest: Path, external: bool = False) -> None:
    """Dynamic int8 quantisation of every weight MatMul/Gemm (activations quantised per call):
    int8 dot products run on the CPU's VNNI instructions where it has them."""
    with quiet_quantization():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(src),
            str(dest),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=external,
        )


def gemm_to_matmul(model) -> int:
    """Gemm(A, W, b) with a constant W -> MatMul(A, W) + Add(b), in place: ORT's weight-only
    quantizer rewrites MatMul nodes only, and the exporter writes every projection as a Gemm.
    Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if (
            node.op_type != "Gemm"
            or node.input[1] not in weights
            or attrs.get("transA")
            or not plain
        ):
            nodes.append(node)
            continue
        if attrs.get("transB"):
            w = weights[node.input[1]]
            w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", node.input[:2], [product], node.name + "_matmul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], node.output, node.name))
        else:
            nodes[-1].output[0] = node.output[0]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # no onnx.checker here: ORT's fused graph holds its own ops in the default domain
    # (SimplifiedLayerNormalization), which the checker does not know
    return rewritten


# measured (docs/weight-quant-*.json, scripts/measure_weight_quant.py): accuracy level 4 (int8
# dot products) made the decode step 2.5x (tiny) / 3.6x (gpt2-124m) faster than fp32 where the
# default fp32 compute gained 1.06x / 1.21x; blocks of 128 were 3-9% faster than 32 but kept the
# fp32 top token less often (51% vs 69% of positions at gpt2-124m's random stand-in weights);
# blocks of 16, zero points and HQQ kept it no more often (71%, 66%, 54%) and ran slower
WEIGHT_BLOCK, WEIGHT_ACCURACY_LEVEL = 32, 4


def quantize_matmul_weights(
    model,
    bits: int,
    block: int = WEIGHT_BLOCK,
    accuracy_level=WEIGHT_ACCURACY_LEVEL,
    symmetric: bool = True,
    algorithm: str = "rtn",
):
    """The model (float32 weights) with every constant-weight Gemm/MatMul as MatMulNBits:
    `bits`-bit weights in blocks of `block` along K, one scale per block, symmetric (or with a
    zero point per block), rounded to nearest ("rtn") or fitted by HQQ ("hqq"), all by
    onnxruntime.quantization's MatMulNBitsQuantizer; activations stay float32."""
    gemm_to_matmul(model)
    with quiet_quantization():
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        algo = None
        if algorithm == "hqq":
            algo = nbits.HQQWeightOnlyQuantConfig(
                block_size=block, bits=bits, op_types_to_quantize=("MatMul",)
            )
        elif algorithm != "rtn":
            raise ValueError(f"unknown weight quantization algorithm {algorithm!r}")
        quantizer = nbits.MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=block,
            is_symmetric=symmetric,
            accuracy_level=accuracy_level,
            op_types_to_quantize=("MatMul",),
            algo_config=algo,
        )
        quantizer.process()
    return quantizer.model.model


def quantize_weights(bits: int) -> Callable:
    """A rewrite: ORT's fusions, then the weights quantized (quantize_matmul_weights). The LM head
    keeps float32 weights where they are the tied embedding table read through a Transpose (not a
    constant the quantizer can rewrite)."""

    def rewrite(src: Path, dest: Path, external: bool = False) -> None:
        import tempfile

        import onnx

        from .external import save

        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            fused = Path(tmp) / "fused.onnx"
            ort_optimize(src, fused, external)
            model = onnx.load(str(fused))  # with its external data, if any
        save(quantize_matmul_weights(model, bits), dest, external)

    rewrite.__name__ = f"quantize_weights_int{bits}"
    return rewrite


@dataclass(frozen=True)
class Flavour:
    suffix: str
    runtime: str  # what can run it, recorded in the file's metadata
    decoder: bool = False  # the graph with a KV cache (decoder_io), else the full forward
    fused: bool = False  # attention through the fused-kernel op
    rewrite: Optional[Callable] = None  # after export: rewrite(src, dest, external) writes it
    # warm export time at the spec's size on this machine (1 thread), measured; a parallel export
    # hands out the slow ones first, so the cheap ones fill the end
    export_s: float = 3.0
    portable: bool = False  # loads in any ONNX tool (check-tools runs it everywhere)


_PORTABLE = "any ONNX runtime (standard ai.onnx ops only, opset 18)"
_ORT_ONLY = "ONNX Runtime only (com.microsoft contrib ops: GroupQueryAttention, Gelu)"
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
    "int4": Flavour(
        ".int4.onnx",
        _ORT_ONLY + ", 4-bit weights (MatMulNBits)",
        fused=True,
        rewrite=quantize_weights(4),
        export_s=3.0,
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
    "decoder-int8": Flavour(
        ".decoder.int8.onnx",
        _ORT_ONLY + ", 8-bit weights (MatMulNBits)",
        decoder=True,
        fused=True,
        rewrite=quantize_weights(8),
        export_s=3.5,
    ),
    "decoder-int4": Flavour(
        ".decoder.int4.onnx",
        _ORT_ONLY + ", 4-bit weights (MatMulNBits)",
        decoder=True,
        fused=True,
        rewrite=quantize_weights(4),
        export_s=3.5,
    ),
}
