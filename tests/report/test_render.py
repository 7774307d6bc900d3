"""The report's rendering, fast: docs/report.json (a real `pipeline all` run, kept as a record)
rendered again, measuring nothing, must show the numbers it holds."""

import json
import re
from pathlib import Path

import matplotlib.image
from conftest import run

from pipeline.report.collect import forward_runtimes
from pipeline.table import _cell

RECORD = Path(__file__).resolve().parents[2] / "docs" / "report.json"


def test_a_kept_report_renders_with_its_numbers(tmp_path):
    source = tmp_path / "report.json"
    source.write_text(RECORD.read_text())
    result = run("report", "--from", str(source), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output + result.stderr
    data, text = json.loads(source.read_text()), (tmp_path / "report.md").read_text()
    for rec in data["bench"]["records"]:
        assert _cell(rec["p50_ms"]) in text, rec
    for by_threads in data["machine"]["gemm_gflops"].values():
        assert all(f"{g:.0f} GFLOP/s on {t} thread" in text for t, g in by_threads.items())
    for rec in data["decode"]["steps"]:
        assert _cell(rec["p50_ms"]) in text
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert matplotlib.image.imread(str(tmp_path / name)).ndim == 3
    assert (
        f"{data['memory']['n_params']:,} parameters" in text and "## Architecture changes" in text
    )


def test_the_report_measures_the_registry_runtimes():
    assert forward_runtimes(False) == ["torch", "ort", "ort-opt", "ort-int8"]
    assert {"torch", "ort", "ort-opt", "ort-int8", "openvino"} <= set(forward_runtimes(True))
    assert "torch-compile" not in forward_runtimes(True)  # a minute's compile: bench only


def test_the_model_line_says_which_weights_were_measured():
    from pipeline.report.render import _model_lines

    record = {"size": "tiny", "config": {}}
    assert "supplied weights" in _model_lines({**record, "weights": None})[0]
    assert "/tmp/w.pt" in _model_lines({**record, "weights": "/tmp/w.pt"})[0]
    assert "weights" not in _model_lines(record)[0]  # an older record says nothing it cannot know
