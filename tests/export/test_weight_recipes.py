"""Every weight recipe reaches the graph as it says (bits, block, zero points, compute, the head's
own bits), round-to-nearest's blocks dequantize to the float32 weights within one step of their
scale (an independent unpacking of MatMulNBits' layout), and the refusals."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from pipeline.errors import PipelineError
from pipeline.export.flavours import head_matmul, ort_optimize, quantize_matmul_weights
from pipeline.export.weight_recipes import RECIPES, WeightRecipe, get_recipe


@pytest.fixture(scope="module")
def fused(baseline_dir, tmp_path_factory):
    """The ORT-optimised forward: its tied head folded into a constant the quantizer can see."""
    path = tmp_path_factory.mktemp("fused") / "baseline.ort-opt.onnx"
    ort_optimize(baseline_dir / "baseline.onnx", path)
    return path


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _calibration():
    return [{"input_ids": np.random.default_rng(0).integers(0, 512, (1, 16), dtype=np.int64)}]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_reaches_the_graph(fused, name):
    recipe = RECIPES[name]
    model = onnx.load(str(fused))
    head = head_matmul(model)
    assert head is not None and head.output  # the folded head of the fused graph
    head_weight, head_output = head.input[1], head.output[0]
    calibration = _calibration() if recipe.calibrated else None
    quantized = quantize_matmul_weights(model, recipe, calibration)
    nbits = [n for n in quantized.graph.node if n.op_type == "MatMulNBits"]
    heads = [n for n in nbits if n.output[0] == head_output]
    body = [n for n in nbits if n not in heads]
    assert len(body) == 4 * 3  # qkv, attention out, and the MLP's two of each of 4 layers
    head_bits = recipe.head_bits or recipe.bits
    if head_bits == 32:
        assert not heads and any(
            n.op_type == "MatMul" and n.input[1] == head_weight for n in quantized.graph.node
        )
    else:
        assert len(heads) == 1 and _attrs(heads[0])["bits"] == head_bits
    symmetric = recipe.layout[2]
    for node in body:
        a = _attrs(node)
        assert a["bits"] == recipe.bits and a["block_size"] == recipe.block, (name, a)
        assert a.get("accuracy_level", 0) == recipe.accuracy_level, (name, a)
        has_zero_points = len(node.input) > 3 and bool(node.input[3])
        assert has_zero_points == (not symmetric), name


def test_round_to_nearest_blocks_dequantize_to_the_weights(fused):
    """MatMulNBits' B is [N, K / block, block / 2] bytes, low nibble first, one scale per
    (column, block), zero point 8 when symmetric: each weight within one step of its scale."""
    model = onnx.load(str(fused))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantized = quantize_matmul_weights(model, get_recipe("int4"))
    tensors = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    checked = 0
    for node in (n for n in quantized.graph.node if n.op_type == "MatMulNBits"):
        a = _attrs(node)
        k, n, block = a["K"], a["N"], a["block_size"]
        packed = tensors[node.input[1]].reshape(n, -1)
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k]
        scales = tensors[node.input[2]].reshape(n, -1)
        step = np.repeat(scales, block, axis=1)[:, :k]
        dequantized = ((codes.astype(np.float32) - 8) * step).T  # [K, N] as MatMul's weight
        # MatMulNBits names its weight after the float one: "<name>_Q4"
        original = weights[node.input[1].rsplit("_Q4", 1)[0]]
        assert original.shape == (k, n)
        assert np.all(np.abs(dequantized - original) <= np.abs(step.T) + 1e-6), node.name
        assert np.abs(dequantized - original).max() > 0  # quantized, not copied
        checked += 1
    assert checked == 4 * 3 + 1


def test_the_refusals():
    with pytest.raises(PipelineError, match="unknown weight recipe 'int3'"):
        get_recipe("int3")
    with pytest.raises(ValueError, match="unknown weight quantization algorithm 'awq-ish'"):
        quantize_matmul_weights(onnx.ModelProto(), WeightRecipe(algorithm="awq-ish"))


def test_gptq_needs_calibration_and_keeps_no_float32_head(fused):
    with pytest.raises(ValueError, match="GPTQ needs calibration feeds"):
        quantize_matmul_weights(onnx.load(str(fused)), get_recipe("int4-gptq"))
    with pytest.raises(ValueError, match="its head can have 8 bits, not 32"):
        quantize_matmul_weights(
            onnx.load(str(fused)), WeightRecipe(algorithm="gptq", head_bits=32), _calibration()
        )
