"""OpenVINO and torch.compile as runtimes: the same logits as the float64 reference before they
are timed, and each a registry entry that bench, verify and compare pick up."""

import json
import re

import numpy_reference
import pytest
from conftest import close, ids_of, run

from pipeline.runtime.registry import build
from pipeline.workspace import Workspace


@pytest.mark.parametrize("n", [1, 37, 300])
def test_openvino_f32_computes_the_reference(n, baseline_dir, state_dict):
    runner = build("openvino", "forward", Workspace(baseline_dir), "baseline", threads=1)
    assert "f32" in str(runner.precision) or "float32" in str(runner.precision)
    ids = ids_of(n, seed=3).numpy()
    close(runner.run(ids)[0], numpy_reference.forward(state_dict, ids[0].tolist(), "baseline"))


def test_openvino_in_bench_with_its_gemm_rate(baseline_dir, tmp_path):
    path = tmp_path / "b.json"
    result = run(
        "bench",
        "--runtime",
        "ort-opt,openvino",
        "--threads",
        "1",
        "--seq-lens",
        "8",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--out",
        str(baseline_dir),
        "--json",
        str(path),
    )
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(path.read_text())
    assert {r["runtime"] for r in data["records"]} == {"ort-opt", "openvino"}
    assert all(r["max_abs_diff"] < 1e-3 for r in data["records"])
    assert set(data["machine"]["gemm_gflops"]) == {"onnxruntime", "torch", "openvino"}
    assert "baseline, 1 thread(s), S=8: " in result.stdout  # a winner, or a tie within noise
    assert re.search(r"why \(1 thread\(s\)\): onnxruntime's 1024\^3 GEMM runs at [\d.]+x "
                     "openvino's", result.stdout), result.stdout  # fmt: skip


@pytest.mark.slow
def test_torch_compile_computes_the_reference_without_recompiling(baseline_dir, state_dict):
    """One compilation (dynamic shapes) serves every later length; its time is reported apart."""
    import torch._dynamo

    runner = build("torch-compile", "forward", Workspace(baseline_dir), "baseline", threads=1)
    assert runner.compile_s > 0
    torch._dynamo.config.error_on_recompile = True
    try:
        for n in (1, 40, 300):
            ids = ids_of(n, seed=5).numpy()
            close(
                runner.run(ids)[0], numpy_reference.forward(state_dict, ids[0].tolist(), "baseline")
            )
    finally:
        torch._dynamo.config.error_on_recompile = False


def test_a_wrong_runtime_is_refused_before_timing(baseline_dir, monkeypatch):
    """A runtime whose logits differ is an error naming it, never a timing."""
    from pipeline.runtime import session

    real = session.OrtRunner.run
    monkeypatch.setattr(session.OrtRunner, "run", lambda self, ids: real(self, ids) * 1.01)
    result = run(
        "bench",
        "--runtime",
        "torch,ort",
        "--threads",
        "1",
        "--seq-lens",
        "8",
        "--repeat",
        "2",
        "--out",
        str(baseline_dir),
    )
    assert result.exit_code == 1 and "ort computes other logits than eager torch" in result.stderr


def test_a_runtime_not_installed_is_skipped_not_failed(baseline_dir, monkeypatch, tmp_path):
    from pipeline.runtime.registry import RUNTIMES, Runtime

    ghost = Runtime(
        "ghost", "needs a package nobody has", forward="x:y", requires=("no_such_package_here",)
    )
    monkeypatch.setitem(RUNTIMES, "ghost", ghost)
    path = tmp_path / "b.json"
    result = run(
        "bench",
        "--runtime",
        "ort,ghost",
        "--threads",
        "1",
        "--seq-lens",
        "4",
        "--repeat",
        "2",
        "--out",
        str(baseline_dir),
        "--json",
        str(path),
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "ghost: not installed" in result.stdout
    data = json.loads(path.read_text())
    assert data["not_installed"] == ["ghost"] and {r["runtime"] for r in data["records"]} == {
        "ort",
        "ort-opt",
    }
