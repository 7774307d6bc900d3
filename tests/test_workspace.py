"""workspace.py: weights read and hashed once per size, the hash of the bytes read, artifacts
exported once and then kept."""

import hashlib

import pytest

import pipeline.workspace as workspace_module
from pipeline.weights import DEFAULT_WEIGHTS
from pipeline.workspace import Workspace


def test_the_weights_are_read_once_and_hashed_from_their_bytes(tmp_path, monkeypatch):
    reads = []
    real = workspace_module.read_weights
    monkeypatch.setattr(workspace_module, "read_weights", lambda *a: reads.append(a) or real(*a))
    ws = Workspace(tmp_path)
    first = ws.state_dict("baseline")
    assert ws.state_dict("rope") is first  # same size: the same read
    assert ws.weights_sha256("palm") == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert len(reads) == 1
    assert ws.sized("rope") == "rope"  # the spec's format has no size of its own


def test_an_artifact_is_exported_once_then_kept(tmp_path, baseline_dir):
    import shutil

    shutil.copy(baseline_dir / "baseline.onnx", tmp_path / "baseline.onnx")
    shutil.copy(baseline_dir / "manifest.json", tmp_path / "manifest.json")
    ws = Workspace(tmp_path)
    path = ws.artifact("baseline")
    stamp = path.stat().st_mtime_ns
    assert ws.artifact("baseline") == path and path.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_prepare_exports_what_is_missing_in_one_go_and_keeps_the_rest(tmp_path):
    from pipeline.export import onnx_metadata

    ws = Workspace(tmp_path)
    pairs = [("baseline", "portable"), ("baseline", "optimized")]
    ws.prepare(pairs)
    paths = [tmp_path / "baseline.onnx", tmp_path / "baseline.ort-opt.onnx"]
    for path, (variant, flavour) in zip(paths, pairs):
        meta = onnx_metadata(path)
        assert (meta["pipeline.variant"], meta["pipeline.flavour"]) == (variant, flavour)
    stamps = [p.stat().st_mtime_ns for p in paths]
    ws.prepare(pairs)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    assert ws.artifact("baseline", "optimized") == paths[1]  # what prepare wrote is trusted
    assert paths[1].stat().st_mtime_ns == stamps[1]
