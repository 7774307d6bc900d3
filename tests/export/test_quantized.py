"""Weight-only quantized graphs (MatMulNBits): the Gemm rewrite they need is exact, and the int8
and int4 decoders stay close to the float64 reference, with their cost stated, not hidden."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run, seeded_with_baseline

from pipeline.export.flavours import gemm_to_matmul
from pipeline.runtime.decoders import teacher_forced_logits
from pipeline.runtime.registry import build
from pipeline.workspace import Workspace


def test_gemm_to_matmul_computes_the_same_logits(baseline_dir, tmp_path):
    model = onnx.load(str(baseline_dir / "baseline.onnx"))
    gemms = sum(n.op_type == "Gemm" for n in model.graph.node)
    assert gemm_to_matmul(model) == gemms > 0
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    onnx.save_model(model, str(tmp_path / "matmul.onnx"))
    ids = np.random.default_rng(0).integers(0, 512, (2, 33), dtype=np.int64)
    before = ort.InferenceSession(str(baseline_dir / "baseline.onnx")).run(None, {"input_ids": ids})
    after = ort.InferenceSession(str(tmp_path / "matmul.onnx")).run(None, {"input_ids": ids})
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-4)


def test_quantizing_leaves_the_root_logger_alone(baseline_dir):
    """onnxruntime's weight-only quantizer calls logging.basicConfig(level=INFO) on import: left
    in place, every later INFO record of any library (onnx_ir's, in the next export) is printed."""
    import logging
    import subprocess
    import sys

    code = (
        "import logging, onnx\n"
        "from pipeline.export.flavours import quantize_matmul_weights\n"
        f"quantize_matmul_weights(onnx.load({str(baseline_dir / 'baseline.onnx')!r}))\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(logging.WARNING)], out.stdout + out.stderr
    assert "INFO" not in out.stderr


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, baseline_dir):
    out = seeded_with_baseline(tmp_path_factory.mktemp("quantized"), baseline_dir)
    result = run("export", "--variant", "baseline", "--decoder", "--quantize", "int4", "--out", out)
    assert result.exit_code == 0, result.stderr
    return Workspace(out)


@pytest.mark.slow
@pytest.mark.parametrize("runtime, bits", [("ort-int8", 8), ("ort-int4", 4)])
def test_weight_only_decoders_stay_close_to_float64(quantized, runtime, bits):
    """Every projection and the LM head read `bits`-bit weights; fed as generation feeds them,
    the logits keep the reference's top-1 token at most positions (measured, and bounded here
    so a broken quantizer fails: the tiny model's int4 agrees at ~98%)."""
    from pipeline.export.weight_recipes import DEFAULT_RECIPE, RECIPES

    path = quantized.artifact("baseline", f"decoder-int{bits}")
    nodes = onnx.load(str(path)).graph.node
    widths = [
        next(a.i for a in n.attribute if a.name == "bits")
        for n in nodes
        if n.op_type == "MatMulNBits"
    ]
    head_bits = RECIPES[DEFAULT_RECIPE[bits]].head_bits or bits
    assert sorted(widths) == sorted([bits] * 4 * 3 + [head_bits])  # projections, then the head
    fp32 = quantized.artifact("baseline", "decoder-optimized")
    assert path.stat().st_size < fp32.stat().st_size * (0.4 if bits == 8 else 0.3)
    model = quantized.model("baseline").double()
    ids = np.random.default_rng(3).integers(0, 512, (1, 200), dtype=np.int64)
    with torch.no_grad():
        want = model(torch.from_numpy(ids))[0, 99:].numpy()
    got = teacher_forced_logits(build(runtime, "decoder", quantized, "baseline"), ids, 100)[0]
    assert np.isfinite(got).all()
    top1 = (got.argmax(-1) == want.argmax(-1)).mean()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert top1 >= (0.97 if bits == 8 else 0.85), top1
    assert 1e-5 < rel < (0.05 if bits == 8 else 0.3), rel  # approximate, and not a copy of fp32


@pytest.mark.slow
def test_quantized_forward_and_verify_report_the_cost(quantized):
    result = run("verify", "--variant", "baseline", "--runtime", "ort-int4,ort-int4-decoder",
                 "--out", quantized.out_dir)  # fmt: skip
    # the approximate rows are shown, and nothing graded is an error, never "0 of 0 checks pass"
    assert result.exit_code == 1 and "error: nothing was graded: ort-int4" in result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("baseline")]
    assert {r[2] for r in rows} == {"forward", "decoder"}
    assert all(r[-1] == "info" and 80 <= float(r[-2]) <= 100 for r in rows)
