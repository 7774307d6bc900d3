"""The runtime registry: names resolve, a wrong graph kind is one clear error, a missing package
is 'not installed', and a runtime added as one entry shows up in bench, verify, compare, infer
and generate with nothing else changed."""

import json

import numpy as np
import pytest
from conftest import run

from pipeline.errors import PipelineError
from pipeline.runtime import registry
from pipeline.runtime.registry import RUNTIMES, Runtime, resolve_runtimes


def ort_basic_runner(runtime, workspace, variant, threads=None):
    """A runtime that exists only in this test: ORT on the portable file with basic fusions."""
    from pipeline.runtime.session import OrtRunner

    return OrtRunner(
        workspace.artifact(variant, runtime.forward_flavour), threads, opt_level="basic"
    )


def torch_decoder_again(runtime, workspace, variant, threads=None):
    from pipeline.runtime.decoders import TorchDecoder

    return TorchDecoder(workspace.model(variant), threads)


@pytest.fixture
def added(monkeypatch):
    entry = Runtime(
        "ort-basic",
        "ORT, basic fusions only (test entry)",
        forward="test_registry:ort_basic_runner",
        decoder="test_registry:torch_decoder_again",
        forward_flavour="portable",
    )
    monkeypatch.setitem(RUNTIMES, entry.name, entry)
    return entry


def test_names_aliases_and_graph_kinds():
    assert resolve_runtimes("all", "forward") == ["torch", "ort", "ort-opt"]
    assert resolve_runtimes("torch, ort-int8", "forward") == ["torch", "ort-int8"]
    assert resolve_runtimes("ort", "forward", {"ort": ["ort", "ort-opt"]}) == ["ort", "ort-opt"]
    assert "genai" in resolve_runtimes("all", "decoder") and "torch-recompute" in resolve_runtimes(
        "all", "decoder"
    )
    with pytest.raises(PipelineError, match="does not run the forward graph"):
        resolve_runtimes("genai", "forward")
    with pytest.raises(PipelineError, match="unknown runtime 'onnx'"):
        resolve_runtimes("onnx", "forward")
    with pytest.raises(PipelineError, match="no runtime named"):
        resolve_runtimes(" , ", "decoder")


def test_a_missing_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(
        RUNTIMES,
        "ghost",
        Runtime(
            "ghost", "needs a package nobody has", forward="x:y", requires=("no_such_package_here",)
        ),
    )
    with pytest.raises(
        PipelineError, match="needs the package 'no_such_package_here', which is not installed"
    ):
        registry.build("ghost", "forward", None, "baseline")


def test_an_added_runtime_shows_up_everywhere(added, baseline_dir, tmp_path):
    out = str(baseline_dir)
    bench = run(
        "bench",
        "--runtime",
        "torch,ort-basic",
        "--threads",
        "1",
        "--seq-lens",
        "4,9",
        "--warmup",
        "0",
        "--repeat",
        "2",
        "--out",
        out,
        "--json",
        str(tmp_path / "b.json"),
    )
    assert bench.exit_code == 0, bench.output + bench.stderr
    records = json.loads((tmp_path / "b.json").read_text())["records"]
    assert {r["runtime"] for r in records} == {"torch", "ort-basic"}
    verify = run("verify", "--variant", "baseline", "--runtime", "ort-basic", "--out", out)
    assert verify.exit_code == 0, verify.output + verify.stderr
    assert "ort-basic" in verify.stdout and "checks pass" in verify.stdout
    compare = run(
        "compare",
        "--variant",
        "baseline,palm",
        "--runtime",
        "ort-basic",
        "--repeat",
        "2",
        "--out",
        out,
        "--json",
        str(tmp_path / "c.json"),
    )
    assert compare.exit_code == 0, compare.output + compare.stderr
    assert json.loads((tmp_path / "c.json").read_text())["runtimes"] == ["ort-basic"]
    infer = run("infer", "--ids", "3,14,15", "--runtime", "ort-basic", "--out", out, "--json")
    torch = run("infer", "--ids", "3,14,15", "--runtime", "torch", "--out", out, "--json")
    got, want = json.loads(infer.stdout)["top_k"], json.loads(torch.stdout)["top_k"]
    assert [t["token"] for t in got] == [t["token"] for t in want]
    assert np.allclose([t["logit"] for t in got], [t["logit"] for t in want], atol=1e-3)
    gen = run(
        "generate",
        "--ids",
        "3,14,15",
        "--runtime",
        "ort-basic",
        "--max-new-tokens",
        "4",
        "--out",
        out,
        "--json",
    )
    assert gen.exit_code == 0 and json.loads(gen.stdout)["runtime"] == "ort-basic"


def test_a_runtime_is_refused_where_it_cannot_run(baseline_dir):
    result = run("infer", "--ids", "1,2", "--runtime", "genai", "--out", str(baseline_dir))
    assert result.exit_code == 1 and "does not run the forward graph" in result.stderr
    result = run("bench", "--mode", "decode", "--runtime", "openvino", "--out", str(baseline_dir))
    assert result.exit_code == 1 and "does not run the decoder graph" in result.stderr
