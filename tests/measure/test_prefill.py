"""bench --mode prefill: every candidate graph checked against the exported one before timing."""

import json

import numpy as np
import onnx
from conftest import run

from pipeline.config import BASE_CONFIG
from pipeline.measure.prefill import packed_qkv


def test_prefill_mode_times_the_candidates_that_compute_the_same_logits(baseline_dir, tmp_path):
    path = tmp_path / "prefill.json"
    result = run("bench", "--mode", "prefill", "--seq-lens", "8,40", "--threads", "1",
                 "--repeat", "2", "--out", baseline_dir, "--json", path)  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    (data,) = json.loads(path.read_text())["runs"]
    for n in (8, 40):
        for name in ("ort-opt", "ort-opt, packed QKV", "decoder, cache in place"):
            row = data["rows"][f"{name} @ {n}"]
            assert row["p50_ms"] > 0 and np.isfinite(row["x_bound"]) and row["x_bound"] > 0
    assert data["notes"]["ort-opt, packed QKV"].startswith(f"{BASE_CONFIG.n_layers} Group")
    assert "x bound" in result.stdout


def test_packing_feeds_the_projection_whole(baseline_dir):
    model = onnx.load(str(baseline_dir / "baseline.ort-opt.onnx"))
    packed, count = packed_qkv(model)
    assert count == BASE_CONFIG.n_layers
    attention = [n for n in packed.graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.input[1] == n.input[2] == "" for n in attention)
    # a Split is dropped only where nothing else reads its outputs
    read = [i for n in packed.graph.node for i in n.input]
    for split in (n for n in packed.graph.node if n.op_type == "Split"):
        assert any(out in read for out in split.output)
