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
    next export) print to stderr; and it logs advice meant for image models. All undone here."""
    import contextlib
    import io
    import logging
    import warnings

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.disable(logging.WARNING)
    # GPTQ and k-quant (neural_compressor's code) print progress bars to stdout; HQQ warns
    # about read-only numpy arrays
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
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


def head_matmul(model):
    """The MatMul with a constant weight that computes the logits (the graph's first output),
    found back through the ops that may follow it; None where the head's weight is not a
    constant (the tied embedding table read through a Transpose)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {t.name for t in model.graph.initializer}
    if not model.graph.output:
        return None
    name = model.graph.output[0].name
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node if node.input[1] in constants else None
        if node.op_type not in ("Add", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"):
            return None
        name = next((i for i in node.input if i and i not in constants), None)
    return None


class _Feeds:
    """onnxruntime.quantization's calibration reader over a list of feeds (GPTQ's text)."""

    def __init__(self, feeds):
        self.feeds, self.at = list(feeds), 0

    def get_next(self):
        self.at += 1
        return self.feeds[self.at - 1] if self.at <= len(self.feeds) else None

    def __iter__(self):
        return iter(self.feeds)


def _nbits_pass(model, recipe, exclude=(), calibration=None):
    """One MatMulNBitsQuantizer pass over the MatMuls with constant weights, but `exclude`."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    algo = None
    if recipe.algorithm == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(
            block_size=recipe.block, bits=recipe.bits, op_types_to_quantize=("MatMul",)
        )
    elif recipe.algorithm == "k_quant":
        algo = nbits.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
    elif recipe.algorithm == "gptq":
        if not calibration:
            raise ValueError("GPTQ needs calibration feeds (text to calibrate on)")
        algo = nbits.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=_Feeds(calibration),
            block_size=128,  # GPTQ's column block (how many columns it updates at once)
            op_types_to_quantize=("MatMul",),
        )
    elif recipe.algorithm != "rtn":
        raise ValueError(f"unknown weight quantization algorithm {recipe.algorithm!r}")
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=recipe.bits,
        block_size=recipe.block,
        is_symmetric=recipe.symmetric,
        accuracy_level=recipe.accuracy_level,
        nodes_to_exclude=list(exclude),
        op_types_to_quantize=("MatMul",),
        algo_config=algo,
    )
    quantizer.process()
    quantized = quantizer.model
    quantized = quantized.model if hasattr(quantized, "model") else quantized
    if recipe.accuracy_level:  # HQQ's nodes do not carry it: int8 compute for every recipe
        from onnx import helper

        for node in quantized.graph.node:
            names = {a.name for a in node.attribute}
            if node.op_type == "MatMulNBits" and "accuracy_level" not in names:
                node.attribute.append(
                    helper.make_attribute("accuracy_level", recipe.accuracy_level)
                )
    return quantized


def quantize_matmul_weights(model, recipe=None, calibration=None):
    """The model (float32 weights) with every constant-weight Gemm/MatMul as MatMulNBits, as the
    recipe says (pipeline/export/weight_recipes.py; the int4 default when None): weights in
    blocks along K with one scale per block (and a zero point when not symmetric), the LM head at
    its own bits, all by onnxruntime.quantization's MatMulNBitsQuantizer; activations stay
    float32. `calibration`: input feeds for a calibrated algorithm (GPTQ)."""
    from dataclasses import replace

    from .weight_recipes import DEFAULT_RECIPE, RECIPES

    recipe = recipe or RECIPES[DEFAULT_RECIPE[4]]
    gemm_to_matmul(model)
    head = head_matmul(model)
    head_bits = recipe.head_bits or recipe.bits
    apart = head is not None and head_bits != recipe.bits  # the head gets its own pass, or none
    with quiet_quantization():
        if apart and head_bits < 32:
            others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n is not head]
            head_recipe = replace(recipe, bits=head_bits, algorithm="rtn", head_bits=None)
            model = _nbits_pass(model, head_recipe, exclude=others)
        elif apart and recipe.algorithm == "gptq":
            raise ValueError("GPTQ quantizes every MatMul: its head can have 8 bits, not 32")
        exclude = [head.name] if apart and head_bits == 32 else []
        model = _nbits_pass(model, recipe, exclude, calibration)
    return model


def quantize_weights(bits: int) -> Callable:
    """A rewrite: ORT's fusions (which fold a tied head's Transpose into a constant), then the
    weights quantized by the default recipe of `bits` (quantize_matmul_weights)."""

    def rewrite(src: Path, dest: Path, external: bool = False) -> None:
        import tempfile

        import onnx

        from .external import save

        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            fused = Path(tmp) / "fused.onnx"
            ort_optimize(src, fused, external)
            model = onnx.load(str(fused))  # with its external data, if any
        from .weight_recipes import DEFAULT_RECIPE, RECIPES

        save(quantize_matmul_weights(model, RECIPES[DEFAULT_RECIPE[bits]]), dest, external)

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
    weight_bits: Optional[int] = None  # weight-only quantized by the default recipe of these bits


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
        weight_bits=4,
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
        weight_bits=8,
    ),
    "decoder-int4": Flavour(
        ".decoder.int4.onnx",
        _ORT_ONLY + ", 4-bit weights (MatMulNBits)",
        decoder=True,
        fused=True,
        rewrite=quantize_weights(4),
        export_s=3.5,
        weight_bits=4,
    ),
}
