"""The commands end to end: infer, export, and what they refuse."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run

from pipeline.fileio import torch_save_atomic


def assert_one_line_error(result, pattern):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


def test_infer_json_torch():
    result = run("infer", "--ids", "3,14,15", "--runtime", "torch", "--json", "--top-k", "3")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["logits_shape"] == [1, 3, 512] and len(data["top_k"]) == 3
    logits = [t["logit"] for t in data["top_k"]]
    assert logits == sorted(logits, reverse=True)


def test_infer_ort_agrees_with_torch(baseline_dir):
    outs = [
        json.loads(
            run(
                "infer",
                "--ids",
                "1,2,3,4",
                "--variant",
                "baseline",
                "--runtime",
                rt,
                "--json",
                "--out",
                str(baseline_dir),
            ).stdout
        )
        for rt in ("ort", "torch")
    ]
    assert [t["token"] for t in outs[0]["top_k"]] == [t["token"] for t in outs[1]["top_k"]]


@pytest.mark.parametrize(
    "ids, message",
    [
        ("3,600", "token id 600 is outside [0, 511]"),
        ("3,-1", "token id -1 is outside"),
        ("3,x", "'x' is not an integer"),
        ("1.5", "'1.5' is not an integer"),
        ("", "empty sequence"),
        (",".join(["1"] * 1025), "1025 tokens, more than the model's 1024"),
    ],
)
def test_infer_bad_ids(ids, message):
    assert_one_line_error(run("infer", "--ids", ids, "--runtime", "torch"), message)


def test_unknown_variant():
    assert_one_line_error(run("export", "--variant", "gpt5"), "unknown variant 'gpt5'")


def test_missing_weights(tmp_path):
    assert_one_line_error(
        run("infer", "--ids", "1", "--runtime", "torch", "--weights", str(tmp_path / "no.pt")),
        "weights file not found",
    )


def test_examples_with_wrong_shapes(tmp_path):
    bad = tmp_path / "ex.pt"
    torch_save_atomic([{"input_ids": torch.tensor([1, 2, 3]), "logits": torch.zeros(3, 10)}], bad)
    assert_one_line_error(
        run("verify", "--variant", "baseline", "--runtime", "torch", "--examples", str(bad)),
        "logits have shape [3, 10], expected [3, 512]",
    )


@pytest.mark.slow
def test_truncated_onnx_is_rebuilt_not_trusted(tmp_path, baseline_dir):
    data = (baseline_dir / "baseline.onnx").read_bytes()
    (tmp_path / "baseline.onnx").write_bytes(data[: len(data) // 3])
    result = run("infer", "--ids", "1,2", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "baseline.onnx").stat().st_size > len(data) // 2


def test_truncated_onnx_given_directly(tmp_path, baseline_dir):
    from pipeline import PipelineError
    from pipeline.runtime.session import OrtRunner

    data = (baseline_dir / "baseline.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(PipelineError, match="cut.onnx is not a loadable ONNX model"):
        OrtRunner(tmp_path / "cut.onnx")


def test_weights_pickle_that_runs_code(code_running_pt):
    evil, marker = code_running_pt
    assert_one_line_error(
        run("infer", "--ids", "1", "--runtime", "torch", "--weights", str(evil)), "refused"
    )
    assert not marker.exists()


def test_real_process_exit_and_debug(tmp_path):
    cmd = [sys.executable, "-m", "pipeline", "infer", "--ids", "999", "--runtime", "torch"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == ["error: --ids: token id 999 is outside [0, 511]"]
    debug = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_export_cli_writes_file(tmp_path):
    result = run("export", "--variant", "ln-eps", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "ln-eps.onnx").stat().st_size > 10_000_000
    assert (
        json.loads((tmp_path / "manifest.json").read_text())["artifacts"]["ln-eps.onnx"]["opset"]
        == 18
    )


def test_output_directory_that_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    assert_one_line_error(
        run("export", "--variant", "baseline", "--out", str(blocker)), "cannot write"
    )
