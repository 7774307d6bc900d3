"""Artifacts written as a pair (the graph and its external-data file): what plain onnxruntime and
onnx's checker read from them, how the manifest hashes them, and the faults of a broken pair."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run

from pipeline import PipelineError
from pipeline.examples import load_examples
from pipeline.export.external import HEADROOM, ONNX_FILE_LIMIT, data_path, needs_external_data


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    result = run("export", "--optimize", "--external-data", "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_the_limit_is_protobufs():
    assert not needs_external_data(ONNX_FILE_LIMIT - HEADROOM - 1)
    assert needs_external_data(ONNX_FILE_LIMIT - HEADROOM)


@pytest.mark.parametrize("name", ["baseline.onnx", "baseline.ort-opt.onnx"])
def test_a_pair_gives_the_examples_logits_in_plain_onnxruntime(pair_dir, name):
    path = pair_dir / name
    assert data_path(path).stat().st_size > 0.9 * path.stat().st_size  # the weights moved out
    graph = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for example in load_examples():
        ids = example.input_ids.numpy().reshape(1, -1)
        got = session.run(None, {"input_ids": ids})[0][0]
        want = example.logits.numpy()
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_onnx_checker_reads_the_pair_by_path(pair_dir):
    onnx.checker.check_model(str(pair_dir / "baseline.onnx"), full_check=True)


def test_the_manifest_hashes_the_pair(pair_dir):
    entry = json.loads((pair_dir / "manifest.json").read_text())["artifacts"]["baseline.onnx"]
    assert entry["external_data"] is True
    assert entry["data_size_bytes"] == data_path(pair_dir / "baseline.onnx").stat().st_size
    assert len(entry["data_sha256"]) == 64


@pytest.mark.parametrize("fault", ["truncated", "missing", "changed"])
def test_a_broken_pair_is_exported_again(pair_dir, tmp_path, fault):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(pair_dir, out)
    data = data_path(out / "baseline.onnx")
    blob = data.read_bytes()
    if fault == "truncated":
        data.write_bytes(blob[: len(blob) // 2])
    elif fault == "missing":
        data.unlink()
    else:  # same length, other bytes: only the manifest's hash tells
        data.write_bytes(blob[:-4] + bytes(4 - i for i in range(4)))
    result = run("export", "--external-data", "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    assert "exported again" in result.stdout
    assert data.read_bytes() == blob  # the same weights, written whole again


@pytest.mark.parametrize("fault", ["truncated", "missing"])
def test_a_broken_pair_is_refused_in_one_line_never_loaded(pair_dir, tmp_path, fault):
    import shutil

    from pipeline.runtime.session import make_session

    shutil.copy(pair_dir / "baseline.onnx", tmp_path / "baseline.onnx")
    data = data_path(tmp_path / "baseline.onnx")
    if fault == "truncated":
        data.write_bytes(data_path(pair_dir / "baseline.onnx").read_bytes()[:1000])
    with pytest.raises(PipelineError, match=f"external data file baseline.onnx.data.*{fault}"):
        make_session(tmp_path / "baseline.onnx")


def test_a_self_contained_export_removes_the_old_data_file(pair_dir, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(pair_dir, out)
    result = run("export", "--force", "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    assert not data_path(out / "baseline.onnx").exists()
    graph = onnx.load(str(out / "baseline.onnx"))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)


def test_openvino_reads_the_pair(pair_dir):
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(
        str(pair_dir / "baseline.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    example = load_examples()[0]
    got = compiled(example.input_ids.numpy().reshape(1, -1))[0][0]
    want = example.logits.numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
