"""verify: results printed even where they cannot be recorded, failures named, decoders capped."""

import subprocess
import sys

import pytest
import torch
from conftest import run, unprivileged

from pipeline import PipelineError, load_model
from pipeline.export import manifest
from pipeline.fileio import torch_save_atomic
from pipeline.workspace import Workspace


def test_verify_prints_results_when_the_manifest_cannot_be_written(artifact_dir, monkeypatch):
    def refuse(path, text):
        raise PipelineError(f"cannot write {path}: Permission denied")

    monkeypatch.setattr(manifest, "write_text_atomic", refuse)
    result = run(
        "verify", "--variant", "baseline", "--runtime", "ort-portable", "--out", artifact_dir
    )
    assert result.exit_code == 0, result.stderr
    assert (
        "13 of 13 checks pass" in result.stdout and "baseline" in result.stdout
    )  # 6 examples x 2 + batch 3
    assert "note: results not recorded" in result.stderr and "Permission denied" in result.stderr


def test_verify_in_a_read_only_folder(artifact_dir):
    artifact_dir.chmod(0o555)
    try:
        probe = subprocess.run(
            unprivileged(["touch", str(artifact_dir / "probe")]), capture_output=True
        )
        assert probe.returncode != 0, (
            "the folder is writable for the test's command: it proves nothing"
        )
        result = subprocess.run(
            unprivileged(
                [
                    sys.executable,
                    "-m",
                    "pipeline",
                    "verify",
                    "--variant",
                    "baseline",
                    "--runtime",
                    "ort-portable",
                    "--out",
                    str(artifact_dir),
                ]
            ),
            capture_output=True,
            text=True,
        )
    finally:
        artifact_dir.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert "checks pass" in result.stdout and "not recorded" in result.stderr


def test_a_failing_example_is_named_by_its_index(tmp_path, state_dict):
    ids = torch.arange(5)
    with torch.inference_mode():
        good = load_model(state_dict=state_dict)(ids.reshape(1, -1))[0]
    examples = tmp_path / "ex.pt"
    torch_save_atomic(
        [{"input_ids": ids, "logits": good}, {"input_ids": ids, "logits": good + 1}], examples
    )
    result = run(
        "verify", "--variant", "baseline", "--runtime", "torch", "--examples", examples, "--summary"
    )
    assert result.exit_code == 1
    assert "example #1 (S=5)" in result.stderr and "example #0" not in result.stderr
    detail = run(
        "verify", "--variant", "baseline", "--runtime", "torch", "--examples", examples, "--details"
    )
    rows = [line.split() for line in detail.stdout.splitlines() if line.startswith("baseline")]
    assert [(r[4], r[-1]) for r in rows] == [("0", "pass"), ("1", "FAIL")]


def test_verify_caps_the_one_token_calls(baseline_dir, monkeypatch):
    """decoder_steps (what `pipeline all` uses): each example's last N positions one per call, the
    rest as the prompt, and every fed position still checked against eager torch."""
    from pipeline.check.verify import verify
    from pipeline.examples import load_examples
    from pipeline.export import read_manifest
    from pipeline.runtime.decoders import SharedCacheDecoder  # ort-opt's, the cache in place

    calls = []
    step = SharedCacheDecoder.step
    monkeypatch.setattr(
        SharedCacheDecoder, "step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k)
    )
    out = baseline_dir
    checks = verify(Workspace(out), ["baseline"], [], ["ort-opt"], decoder_steps=4)
    lengths = [ex.seq_len for ex in load_examples(None)]
    assert (
        len(calls)
        == sum(n - max(1, n // 2, n - 4) for n in lengths)
        < sum(n - max(1, n // 2) for n in lengths)
    )
    graded = [c for c in checks if c.passed is not None]
    assert graded and all(c.passed for c in graded) and {c.seq_len for c in graded} == set(lengths)
    entry = read_manifest(out)["artifacts"]["baseline.decoder.ort-opt.onnx"]["verification"]
    assert entry["passed"] and "(at most 4)" in entry["mode"]


def test_a_reference_beyond_float32_fails_instead_of_passing(tmp_path):
    """float64 logits of 1e39 become inf as float32: refused, where a tolerance scaled by inf once
    passed every check against all-zero logits."""
    from pipeline.examples import load_examples

    ids = torch.tensor([[1, 2, 3]])
    logits = torch.zeros(3, 512, dtype=torch.float64)
    logits[0, 0] = 1e39
    examples = tmp_path / "examples.pt"
    torch_save_atomic([{"input_ids": ids, "logits": logits}], examples)
    with pytest.raises(PipelineError, match="not finite in float32"):
        load_examples(examples)
    result = run("verify", "--variant", "baseline", "--runtime", "torch", "--examples", examples)
    assert result.exit_code == 1 and "not finite in float32" in result.stderr


def test_a_non_finite_value_on_either_side_fails():
    import numpy as np

    from pipeline.check.verify import compare

    good = np.ones((2, 4), np.float32)
    for got, want in ((good * np.nan, good), (good, good * np.inf), (good * np.inf, good * np.inf)):
        check = compare("baseline", "ort", "torch", got, want, 1e-4)
        assert check.passed is False and check.max_abs == float("inf")


@pytest.mark.slow  # exports the int8 file
def test_only_approximate_runtimes_is_an_error_not_a_pass(baseline_dir, tmp_path):
    """'0 of 0 checks pass' once exited 0: nothing graded is named as such, exit 1."""
    import shutil

    for name in ("baseline.onnx", "baseline.ort-opt.onnx"):
        shutil.copy(baseline_dir / name, tmp_path / name)
    result = run("verify", "--variant", "baseline", "--runtime", "ort-int8", "--out", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: nothing was graded: ort-int8")
    assert "info" in result.stdout  # the approximate rows are still shown


def test_export_reports_progress_only_for_files_it_writes(artifact_dir):
    result = run("export", "--optimize", "--out", artifact_dir)  # both files are up to date
    assert result.exit_code == 0, result.stderr
    assert "exporting" not in result.stderr and "up to date, kept" in result.stdout
