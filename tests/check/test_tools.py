"""The portable files in other ONNX tools, against the float64 reference."""

import json
import shutil
import subprocess

import numpy as np
import numpy_reference
import onnx
import pytest
from conftest import all_nodes, run, variants_param
from onnx import TensorProto, helper

from pipeline.check.tool_registry import TOOLS, node_script
from pipeline.check.tools import check_file, check_inputs
from pipeline.export.portability import ONNX2TORCH_OPS, unconvertible

IN_CI_TOOLS = ["onnx.reference", "openvino", "tract"]  # test dependencies: always installed here


def reference_batch(state_dict, ids, variant):
    return np.stack([numpy_reference.forward(state_dict, row.tolist(), variant) for row in ids])


@pytest.fixture(scope="module")
def cases(state_dict):
    """Batch 2 at lengths 1, 17 and 300 (and row 0 alone as batch 1), with float64 numpy references."""
    rng = np.random.default_rng(11)
    return [rng.integers(0, 512, (2, n), dtype=np.int64) for n in (1, 17, 300)]


@pytest.mark.parametrize("variant", variants_param())
@pytest.mark.parametrize("tool", IN_CI_TOOLS)
def test_portable_file_in_tool_matches_float64_reference(
    tool, variant, portable, state_dict, cases
):
    assert TOOLS[tool].missing() is None, f"{tool} is a test dependency but {TOOLS[tool].missing()}"
    run = TOOLS[tool].load(portable(variant))
    for ids in cases:
        want = reference_batch(state_dict, ids, variant)
        bound = 1e-4 * max(1.0, np.abs(want).max())
        for batch in (ids[:1], ids):
            got = np.asarray(run({"input_ids": batch}))
            assert got.shape == (batch.shape[0], batch.shape[1], 512), (tool, variant, got.shape)
            diff = np.abs(got - want[: batch.shape[0]]).max()
            assert diff <= bound, (tool, variant, batch.shape, diff)


@pytest.fixture(scope="session")
def ort_node():
    """onnxruntime-node beside scripts/ort_node_run.mjs, installed once if npm can (its CPU
    binaries are bundled, so ONNXRUNTIME_NODE_INSTALL=skip needs no internet)."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: onnxruntime-node cannot be exercised")
    script = node_script()
    assert script is not None
    if not (script.parent / "node_modules" / "onnxruntime-node").is_dir():
        if shutil.which("npm") is None:
            pytest.skip("npm is not on PATH: cannot install onnxruntime-node")
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(script.parent), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**__import__("os").environ, "ONNXRUNTIME_NODE_INSTALL": "skip"},
        )
        if proc.returncode != 0:
            pytest.skip(
                f"npm install onnxruntime-node failed: {proc.stderr.strip().splitlines()[-1:]}"
            )
    assert TOOLS["onnxruntime-node"].missing() is None
    return TOOLS["onnxruntime-node"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", variants_param(["baseline", "palm", "no-scale"]))
def test_onnxruntime_node_runs_the_portable_file(ort_node, variant, portable, state_dict, cases):
    run = ort_node.load(portable(variant))
    ids = cases[1]
    want = reference_batch(state_dict, ids, variant)
    got = run({"input_ids": ids})
    assert got.shape == (2, 17, 512)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("variant", variants_param())
def test_portable_files_use_only_ops_onnx2torch_converts(variant, portable):
    model = onnx.load(str(portable(variant)), load_external_data=False)
    assert unconvertible(model) == []
    assert {o.domain for o in model.opset_import} == {""}
    ops = {n.op_type for n in model.graph.node}
    assert not {"Trilu", "Split"} & ops


def _one_node_model(op, opset, inputs, attrs=None, extra_inits=()):
    node = helper.make_node(op, [i for i, _ in inputs], ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(i, t, None) for i, t in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        list(extra_inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_the_op_check_can_fail():
    """Controls: the very constructs the portable export avoids are flagged."""
    split18 = _one_node_model("Split", 18, [("x", TensorProto.FLOAT), ("s", TensorProto.INT64)])
    assert unconvertible(split18) == ["Split-18"]
    assert (
        unconvertible(
            _one_node_model("Split", 13, [("x", TensorProto.FLOAT), ("s", TensorProto.INT64)])
        )
        == []
    )
    assert unconvertible(_one_node_model("Trilu", 18, [("x", TensorProto.FLOAT)])) == ["Trilu-14"]
    reshape = _one_node_model(
        "Reshape", 18, [("x", TensorProto.FLOAT), ("s", TensorProto.INT64)], {"allowzero": 1}
    )
    assert unconvertible(reshape) == ["Reshape(allowzero=1)"]
    assert unconvertible(
        _one_node_model("LessOrEqual", 18, [("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT)])
    ) == ["LessOrEqual-16"]
    assert ONNX2TORCH_OPS["LayerNormalization"] == (17,)


def test_optimized_files_say_what_they_need(optimized):
    model = onnx.load(str(optimized("baseline")), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pipeline.runtime"].startswith("ONNX Runtime only")
    used = {n.domain for n in model.graph.node} | {n.domain for n in all_nodes(model.graph)}
    assert {o.domain for o in model.opset_import} == used == {"", "com.microsoft"}


def test_check_tools_command(artifact_dir, tmp_path):
    out = artifact_dir
    report = tmp_path / "tools.json"
    result = run(
        "check-tools",
        "--variant",
        "baseline",
        "--out",
        str(out),
        "--lengths",
        "1,17",
        "--json",
        str(report),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    full = [
        d for d in data if not d["file"].endswith(".decoder.onnx")
    ]  # decoders join where exported
    assert [d["variant"] for d in full] == ["baseline"]
    for entry in data:
        by_tool = {r["tool"]: r for r in entry["results"]}
        assert set(by_tool) == set(TOOLS)
        for tool in ["onnxruntime"] + IN_CI_TOOLS:
            r = by_tool[tool]
            assert r["status"] == "match", r
            assert {(c["batch"], c["seq_len"]) for c in r["cases"]} == {
                (1, 1),
                (2, 1),
                (1, 17),
                (2, 17),
            }
        assert all(r["status"] in ("match", "not installed") for r in entry["results"])


def test_tract_refuses_the_optimized_file(optimized):
    """tract 0.23 used to load the MultiHeadAttention file and return wrong logits; it refuses the
    GroupQueryAttention one, and check-tools says so rather than calling it a match."""
    result = run(
        "check-tools",
        "--file",
        str(optimized("baseline")),
        "--lengths",
        "17",
        "--tool",
        "onnxruntime,tract",
    )
    assert result.exit_code == 1
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert "load failed" in rows["tract"] and "match" in rows["onnxruntime"]


def test_a_tool_that_is_not_installed_is_not_a_failure(portable, monkeypatch):
    import pipeline.check.tool_registry as tools_mod

    fake = tools_mod.Tool(
        "imaginary", lambda: "not installed (pip install imaginary)", None, lambda: ""
    )
    monkeypatch.setitem(tools_mod.TOOLS, "imaginary", fake)
    ids = check_inputs(512, lengths=(3,), batches=(2,))
    results = check_file(portable("baseline"), ids, None, 1e-4, ["onnxruntime", "imaginary"])
    assert [r.status for r in results] == ["match", "not installed"]


@pytest.fixture(scope="module")
def portable_decoder(baseline_dir):
    from pipeline.workspace import Workspace

    return Workspace(baseline_dir).artifact("baseline", "decoder")


@pytest.mark.parametrize("tool", IN_CI_TOOLS)
def test_portable_decoder_in_tool(tool, portable_decoder, state_dict):
    """The decoder with past: the prompt with an empty cache, then a step with the cache, at batch
    1 and 2; the float64 numpy reference of the whole sequence is the reference."""
    from pipeline.check.tools import decoder_check_inputs
    from pipeline.config import BASE_CONFIG

    feeds = decoder_check_inputs(portable_decoder, BASE_CONFIG, lengths=(1, 17), batches=(1, 2))
    run = TOOLS[tool].load(portable_decoder)
    for prompt, step in zip(feeds[::2], feeds[1::2]):
        ids = np.concatenate([prompt["input_ids"], step["input_ids"]], 1)
        want = reference_batch(state_dict, ids, "baseline")
        bound = 1e-4 * max(1.0, np.abs(want).max())
        assert np.abs(run(prompt) - want[:, :-1]).max() <= bound, (tool, ids.shape)
        assert np.abs(run(step) - want[:, -1:]).max() <= bound, (tool, ids.shape)


@pytest.mark.slow
def test_check_tools_includes_the_decoder_where_exported(portable_decoder):
    out = portable_decoder.parent
    result = run(
        "check-tools",
        "--variant",
        "baseline",
        "--out",
        str(out),
        "--lengths",
        "1,17",
        "--tool",
        "onnxruntime,openvino,tract",
    )
    assert result.exit_code == 0, result.output
    assert "baseline.decoder.onnx (decoder)" in result.stdout
    assert "one step after a cache of 1,17" in result.stdout
