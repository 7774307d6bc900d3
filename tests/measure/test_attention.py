"""The attention benchmark's routes: query-blocked attention against float64 numpy, and every
route checked against torch's SDPA before it is timed."""

import json

import numpy as np
import pytest
import torch
from conftest import run

from pipeline.measure.attention import blocked_attention


@pytest.mark.parametrize("s", [1, 7, 8, 9, 255, 1000])
def test_query_blocked_attention_against_float64(s):
    """Block sizes that do and do not divide S, and blocks past S empty, against the formula."""
    q, k, v = torch.randn(3, 2, 2, s, 16, generator=torch.Generator().manual_seed(s)).unbind(0)
    got = blocked_attention(q, k, v, 0.25).numpy()
    qn, kn, vn = (t.double().numpy() for t in (q, k, v))
    scores = np.where(
        np.tril(np.ones((s, s), dtype=bool)), qn @ kn.swapaxes(-1, -2) * 0.25, -np.inf
    )
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    want = (weights / weights.sum(-1, keepdims=True)) @ vn
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.slow
def test_bench_attention_mode(tmp_path):
    path = tmp_path / "attention.json"
    result = run(
        "bench",
        "--mode",
        "attention",
        "--threads",
        "1",
        "--seq-lens",
        "5,40",
        "--repeat",
        "2",
        "--json",
        str(path),
    )
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(path.read_text())
    routes = {r["route"] for r in data["records"]}
    assert "torch SDPA (is_causal)" in routes and "ort GroupQueryAttention" in routes
    assert any("query-blocked" in r for r in routes)
    exact = [
        r
        for r in data["records"]
        if r["route"].startswith("ort") and "Attention-23" not in r["route"]
    ]
    assert all(r["max_abs_diff"] < 1e-4 for r in exact), [
        (r["route"], r["max_abs_diff"]) for r in exact
    ]
    assert {(f["threads"], f["seq_len"]) for f in data["fastest"]} == {(1, 5), (1, 40)}
    assert (
        "fastest exact ORT route" in result.stdout
        and data["machine"]["gemm_gflops"]["onnxruntime"]["1"] > 0
    )
