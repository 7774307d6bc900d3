"""The report, on reduced measurements: files, plots, and numbers that are the JSON's."""

import json
import re

import matplotlib.image
import pytest
from conftest import run

from pipeline.measure.memory import explain, measure_memory
from pipeline.report import build_report
from pipeline.report.collect import Sizes
from pipeline.table import _cell
from pipeline.workspace import Workspace


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(False, marks=pytest.mark.slow),
        pytest.param(True, marks=pytest.mark.slow),
    ],
    ids=["default", "full"],
)
def report(exported, request, tmp_path_factory):
    """The report of every variant, measured small (it exports every variant's files: slow)."""
    out = exported["baseline"].parent
    if request.param:  # its own folder: the two reports write the same file names
        out = tmp_path_factory.mktemp("full-report")
        for f in exported["baseline"].parent.glob("*.onnx"):
            (out / f.name).symlink_to(f)
    sizes = Sizes(
        full=request.param,
        bench_seq_lens=(1, 8, 32),
        bench_threads=(1,),
        compare_seq_lens=(4,),
        sweep_seq_lens=(1, 4, 16, 32),
        config_grid={"n_layers": (1, 3), "vocab_size": (256, 512)},
        family_seq_lens=(8, 16, 24),
        memory_seq_len=64,
        decode_past_lens=(0, 5),
        decode_new_tokens=6,
    )
    path, _ = build_report(Workspace(out), sizes=sizes)
    return path, json.loads(path.with_suffix(".json").read_text())


def test_report_plots_open_as_images(report):
    path, data = report
    text = path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(images) == {"bench.png", "sweep_seq.png", "sweep_config.png"} | (
        {"sweep_family.png"} if data["full"] else set()
    )
    for name in images:
        assert matplotlib.image.imread(str(path.parent / name)).ndim == 3


def test_report_default_and_full_measure_what_they_say(report):
    path, data = report
    # the run's check of itself: every bench point counted, the load and the GEMM measured again
    assert data["stability"]["points"] == len(data["bench"]["records"])
    assert set(data["stability"]["load"]) >= {"others_cpu_pct", "steal_pct", "busy"}
    assert set(data["machine"]["gemm_gflops_after"]) == set(data["machine"]["gemm_gflops"])
    assert "- stability: the machine was" in path.read_text()
    text = path.read_text()
    if data["full"]:
        assert data["sweep_seq"]["seq_lens"] == [1, 4, 16, 32]
        assert set(data["sweep_config"]["runtimes"]) == {"torch", "ort"}
        assert data["compare"]["runtimes"] == ["torch", "ort", "ort-opt"]
        assert data["family"]["seq_lens"] == [8, 16, 24] and "pipeline sweep --family" not in text
    else:
        # the length fit is the bench's own points, read back from the bench records
        one_thread = {(r["runtime"], r["seq_len"]): r["p50_ms"] for r in data["bench"]["records"]}
        assert data["sweep_seq"]["seq_lens"] == [1, 8, 32]
        assert data["sweep_seq"]["p50_ms"]["ort"] == [one_thread[("ort", n)] for n in (1, 8, 32)]
        assert data["sweep_config"]["runtimes"] == ["torch"] and "adds them" in text
        assert data["compare"]["runtimes"] == ["torch", "ort-opt"]
        assert data["family"] is None and "pipeline sweep --family" in text


def test_report_family_section(report):
    """One row per member of the attention family, its config's numbers beside the comparison's."""
    from pipeline.config import get_variant
    from pipeline.measure.sweep import FAMILY

    path, data = report
    text = path.read_text()
    assert set(FAMILY) == {"baseline", "rope", "gqa", "sliding-window", "rope-gqa-window"}
    section = text[
        text.index("## The attention family") : text.index("## Generation with a KV cache")
    ]
    for name in FAMILY:
        line = next(line for line in section.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {get_variant(name).config.n_params():,} |" in line
        assert f"| {get_variant(name).config.kv_cache_bytes_per_token():,} |" in line
        # every member's steps, baseline's too, from the family's own phase: one source
        steps = {
            r["runtime"]: r["p50_ms"]
            for r in data["family_decode"]
            if r["variant"] == name
            and r["past_len"] == 5
            and r["runtime"] in ("torch", "ort-opt")
            and r["threads"] == 1
        }
        assert set(steps) == {"torch", "ort-opt"} and line.endswith(
            f"| {_cell(steps['torch'])} | {_cell(steps['ort-opt'])} |"
        )
    if data["full"]:
        for key, fits in data["family"]["fits"].items():
            assert all(
                f"| {key} | {span} | {_cell(fits[k]['a_ms'])} |" in section
                for span, k in (("all S", "all"), ("S >= W", "from_window"))
                if k in fits
            )
        assert set(data["family"]["fits"]) == {
            f"{v}/{rt}" for v in FAMILY for rt in ("torch", "ort-opt")
        }


def test_report_numbers_match_the_json(report):
    path, data = report
    text = path.read_text()
    for rec in data["bench"]["records"]:
        assert _cell(rec["p50_ms"]) in text
    for row in data["compare"]["rows"][1:]:
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {row['variant']} | ")
            and "%" not in line
            and len(line.split("|")) == 10
        )
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:] == [
            _cell(row[k])
            for k in (
                "max_abs_diff",
                "rmse",
                "mean_abs_diff",
                "rel_l2_error",
                "kl_mean",
                "kl_max",
                "top1_agreement_pct",
            )
        ]
    for fit in data["sweep_seq"]["fits"].values():
        assert f"{fit['a_ms']:.2f} ms" in text
    assert f"{data['memory']['n_params']:,} parameters" in text
    assert "## Architecture changes" in text and "palm" in text and "rope-gqa-window" in text
    profile = data["bench"]["profile"]
    assert (
        profile["ms_per_forward"]["GroupQueryAttention"] > 0
        and profile["ms_per_forward"]["Gemm"] > 0
    )
    assert (
        "What bounds `ort-opt`" in text and f"{profile['total_ms']:.1f} ms of kernel time" in text
    )
    assert f"top-1 agreement {data['int8']['top1_agreement_pct']:.1f}%" in text


def test_memory_measurement(baseline_dir):
    result = measure_memory(Workspace(baseline_dir), "baseline", seq_len=32)
    assert result["n_params"] == 3_156_992 and result["param_bytes_fp32"] == 3_156_992 * 4
    rss = result["rss_bytes"]
    assert rss["after_torch_model"] > rss["after_imports"] > rss["start"] > 0
    assert all(isinstance(v, int) for v in result["deltas_bytes"].values())
    sentences = explain(result)
    assert "3,156,992 parameters" in sentences[0] and "12.0 MiB" in sentences[0]


def test_report_decode_section_is_the_json(report):
    path, data = report
    text = path.read_text()
    decode = data["decode"]
    # the portable decoder is not among `pipeline all`'s exports: only the full report times it
    assert {r["runtime"] for r in decode["steps"]} == (
        {"torch", "torch-recompute", "ort-opt", "genai"} | ({"ort"} if data["full"] else set())
    )
    assert {r["past_len"] for r in decode["steps"]} == {0, 5}
    assert "## Generation with a KV cache" in text
    for rec in decode["steps"]:
        assert rec["p50_ms"] > 0 and rec["runs"] >= 3
        assert _cell(rec["p50_ms"]) in text
    for row in decode["end_to_end"]:
        assert row["new_tokens"] == 6 and _cell(row["ttft_ms"]) in text
    assert "6,144 bytes per token" in text


def test_report_renders_again_from_its_json_without_measuring(report, tmp_path, monkeypatch):
    """report.md is a function of report.json: re-rendered elsewhere it is the same text."""

    import pipeline.report.collect as collect_mod

    path, data = report
    monkeypatch.setattr(collect_mod, "collect", lambda *a, **k: pytest.fail("rendering measured"))
    copy = tmp_path / "report.json"
    copy.write_text(path.with_suffix(".json").read_text())
    result = run("report", "--from", str(copy), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output + result.stderr
    assert (tmp_path / "report.md").read_text() == path.read_text()
    assert all(
        (tmp_path / name).is_file() for name in ("bench.png", "sweep_seq.png", "sweep_config.png")
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    refused = run("report", "--from", str(bad), "--out", str(tmp_path))
    assert refused.exit_code == 1 and "not a report.json" in refused.stderr


def test_each_quantity_is_shown_with_one_value(report):
    """The machine's GEMM rates appear once in the JSON, and the report quotes exactly those."""
    path, data = report
    text = path.read_text()
    rates = data["machine"]["gemm_gflops"]
    assert {"onnxruntime", "torch"} <= set(
        rates
    )  # and every other library a runtime of the run used
    for by_threads in rates.values():
        for t, g in by_threads.items():
            assert f"{g:.0f} GFLOP/s on {t} thread" in text
    assert "GFLOP/s" not in json.dumps(
        data["decode"]
    )  # the decode section refers to the machine's rates
    assert "1.21e-16" not in text and "variants above" not in text
