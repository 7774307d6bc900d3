"""The manifest and artifact reuse: nothing is trusted by its name, nothing lost under concurrency."""

import json
import multiprocessing as mp
import re
import shutil

import pytest
from conftest import run

from pipeline import PipelineError
from pipeline.export import identity, onnx_export, read_manifest, update_manifest


@pytest.mark.parametrize(
    "content",
    [
        "{}",
        "[]",
        '{"artifacts": null}',
        '{"artifacts": []}',
        '{"artifacts": {"x.onnx": 3}}',
        "not json",
        "",
    ],
)
def test_wrong_shaped_manifest_is_rebuilt(artifact_dir, content):
    (artifact_dir / "manifest.json").write_text(content)
    assert read_manifest(artifact_dir) == {"artifacts": {}}
    result = run(
        "verify", "--variant", "baseline", "--runtime", "ort-portable", "--out", artifact_dir
    )
    assert result.exit_code == 0, result.stderr
    entry = json.loads((artifact_dir / "manifest.json").read_text())["artifacts"]["baseline.onnx"]
    assert entry["verification"]["passed"] is True


def _record_many(out_dir, worker):
    from pathlib import Path

    from pipeline.export import update_manifest as update

    for i in range(10):
        artifact = Path(out_dir) / f"w{worker}-{i}.onnx"
        artifact.write_bytes(b"x" * (i + 1))
        update(out_dir, artifact, {"variant": f"w{worker}", "index": i})


def test_concurrent_manifest_updates_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(read_manifest(tmp_path)["artifacts"]) == 60


@pytest.mark.slow
def test_an_artifact_is_not_trusted_by_its_name(artifact_dir, state_dict):
    # another artifact under baseline's portable name: same variant, other flavour and graph
    shutil.copy(artifact_dir / "baseline.ort-opt.onnx", artifact_dir / "baseline.onnx")
    ort_out = run(
        "infer", "--ids", "5,6,7,8", "--variant", "baseline", "--json", "--out", artifact_dir
    )
    torch_out = run(
        "infer", "--ids", "5,6,7,8", "--variant", "baseline", "--runtime", "torch", "--json"
    )
    assert ort_out.exit_code == 0, ort_out.stderr
    got = [t["token"] for t in json.loads(ort_out.stdout)["top_k"]]
    assert got == [t["token"] for t in json.loads(torch_out.stdout)["top_k"]]
    meta = onnx_export.onnx_metadata(artifact_dir / "baseline.onnx")
    assert (meta["pipeline.variant"], meta["pipeline.flavour"]) == (
        "baseline",
        "portable",
    )  # exported again


def test_stale_reason_names_each_field(artifact_dir, monkeypatch):
    from pipeline.weights import DEFAULT_WEIGHTS, file_sha256

    sha = file_sha256(DEFAULT_WEIGHTS)
    path = artifact_dir / "baseline.onnx"
    assert (
        onnx_export.stale_reason(path, onnx_export.artifact_key("baseline", "portable", sha))
        is None
    )
    assert "variant" in onnx_export.stale_reason(
        path, onnx_export.artifact_key("palm", "portable", sha)
    )
    assert "flavour" in onnx_export.stale_reason(
        path, onnx_export.artifact_key("baseline", "optimized", sha)
    )
    assert "weights" in onnx_export.stale_reason(
        path, onnx_export.artifact_key("baseline", "portable", "0" * 64)
    )
    assert "opset" in onnx_export.stale_reason(
        path, onnx_export.artifact_key("baseline", "portable", sha, 19)
    )
    # a graph of another format (the decoders before GroupQueryAttention) is never reused
    monkeypatch.setattr(identity, "GRAPH_FORMAT", "1")
    assert "graph_format" in onnx_export.stale_reason(
        path, onnx_export.artifact_key("baseline", "portable", sha)
    )


def test_manifest_is_strict_json(tmp_path):
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"x")
    with pytest.raises(PipelineError, match="non-finite"):
        update_manifest(tmp_path, artifact, {"verification": {"tolerance": float("inf")}})
    update_manifest(tmp_path, artifact, {"verification": {"tolerance": 1e-4}})
    json.loads((tmp_path / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(c))


@pytest.mark.slow
def test_a_corrupted_artifact_with_intact_metadata_is_exported_again(artifact_dir, baseline_dir):
    """64 KB overwritten inside an initializer: the metadata still says baseline, but the bytes
    are not those the manifest recorded, so the file is made again before it is used."""
    from pipeline.weights import file_sha256

    shutil.copy(baseline_dir / "manifest.json", artifact_dir / "manifest.json")
    path = artifact_dir / "baseline.onnx"
    recorded = read_manifest(artifact_dir)["artifacts"]["baseline.onnx"]["sha256"]
    assert file_sha256(path) == recorded
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\x7f" * 65536)
    assert (
        onnx_export.onnx_metadata(path)["pipeline.variant"] == "baseline"
    )  # still parses, still "ours"
    ort_out = run(
        "infer", "--ids", "5,6,7,8", "--variant", "baseline", "--json", "--out", artifact_dir
    )
    torch_out = run(
        "infer", "--ids", "5,6,7,8", "--variant", "baseline", "--runtime", "torch", "--json"
    )
    assert ort_out.exit_code == 0, ort_out.stderr
    got, want = json.loads(ort_out.stdout)["top_k"], json.loads(torch_out.stdout)["top_k"]
    assert [t["token"] for t in got] == [t["token"] for t in want]
    assert file_sha256(path) == read_manifest(artifact_dir)["artifacts"]["baseline.onnx"]["sha256"]


@pytest.mark.slow
def test_genai_staging_left_by_a_killed_process_is_removed_and_the_folder_is_readable(
    baseline_dir, tmp_path
):
    import os
    import stat

    from pipeline.workspace import Workspace

    for name in ("baseline.onnx", "baseline.decoder.ort-opt.onnx", "manifest.json"):
        shutil.copy(baseline_dir / name, tmp_path / name)
    dead = 2**22 + 12345  # beyond the default pid_max of 4,194,304: no such process
    leftovers = [
        tmp_path / f".baseline.genai.{dead}.abc123_x.tmp",
        tmp_path / f".baseline.genai.{dead}.old.tmp",
    ]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    folder = Workspace(tmp_path).genai_folder("baseline")
    assert not any(p.exists() for p in leftovers)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755


def test_export_keeps_an_up_to_date_file_and_says_why_it_exports_again(artifact_dir, baseline_dir):
    """`pipeline export` on a current file keeps it and says so; a damaged one is made again with
    the reason; --force makes it again anyway."""
    from pipeline.weights import file_sha256

    shutil.copy(baseline_dir / "manifest.json", artifact_dir / "manifest.json")
    path = artifact_dir / "baseline.onnx"
    stamp = path.stat().st_mtime_ns
    kept = run("export", "--variant", "baseline", "--out", artifact_dir)
    assert kept.exit_code == 0, kept.stderr
    assert re.search(r"baseline\.onnx  \([\d.]+ MB, up to date, kept\)", kept.stdout), kept.stdout
    assert path.stat().st_mtime_ns == stamp
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\x7f" * 4096)
    again = run("export", "--variant", "baseline", "--out", artifact_dir)
    assert "exported again: its bytes differ from the sha256 the manifest recorded" in again.stdout
    assert file_sha256(path) == read_manifest(artifact_dir)["artifacts"]["baseline.onnx"]["sha256"]
    stamp = path.stat().st_mtime_ns
    forced = run("export", "--variant", "baseline", "--out", artifact_dir, "--force")
    assert "exported again: --force" in forced.stdout and path.stat().st_mtime_ns != stamp
