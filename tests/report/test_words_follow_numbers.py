"""The report's and the bench's sentences fed contradictory and noisy records (the ones a busy
machine produced): each claim is made only where its numbers support it."""

import json
import re
from pathlib import Path

from pipeline.measure.forward import Record, speedups
from pipeline.report.latency import latency_section, stability_section
from pipeline.report.lines import fastest_lines, gemm_lines, why_lines
from pipeline.report.render import latency_effect
from pipeline.report.words import scaling_word

DOCS = Path(__file__).resolve().parents[2] / "docs"


def rec(runtime, threads, seq_len, p50, gflops=10.0, gemm=100.0, p90=None):
    return Record(runtime, "baseline", threads, seq_len, p50, p90 or p50 * 1.03, p50, p50, 0.0,
                  8, gflops=gflops, gemm_gflops=gemm)  # fmt: skip


def machine(torch_rates, ort_rates):
    return {"cpu": "test CPU", "isa": ["avx2"], "cores_physical": 2, "cores_logical": 2,
            "cores_usable": 2, "memory_gb": 8.0, "versions": {},
            "gemm_gflops": {"onnxruntime": ort_rates, "torch": torch_rates}}  # fmt: skip


def results_of(records, machine_info):
    return {
        "threads": sorted({r.threads for r in records}),
        "machine": machine_info,
        "compare": {"baseline": "baseline"},
        "bench": {
            "records": [r.to_dict() for r in records],
            "speedups_vs_torch": speedups(records),
            "profile": {"seq_len": 1024, "threads": 1, "total_ms": 50.0,
                        "ms_per_forward": {"MatMul": 40.0, "GroupQueryAttention": 10.0}},
        },
    }  # fmt: skip


def busy_run():
    """The issue's record: 2-thread torch 10.1 -> 103.9 -> 251.8 -> 335.6 -> 56.0 ms over S, a
    2-thread GEMM reference measured below the 1-thread one, and 134 GFLOP/s against 60."""
    lens = (1, 16, 128, 512, 1024)
    torch2 = (10.1, 103.9, 251.8, 335.6, 56.0)
    records = []
    for s, t2 in zip(lens, torch2):
        records += [rec("torch", 1, s, 0.5 + s * 0.2, gflops=50.0, gemm=91.0),
                    rec("ort-opt", 1, s, 0.3 + s * 0.15, gflops=60.0, gemm=95.0),
                    rec("torch", 2, s, t2, gflops=134.0 if s == 1024 else 20.0, gemm=60.0),
                    rec("ort-opt", 2, s, 0.2 + s * 0.09, gflops=70.0, gemm=150.0)]  # fmt: skip
    return records, machine({"1": 91.0, "2": 60.0}, {"1": 95.0, "2": 150.0})


def test_a_busy_run_marks_its_points_and_prints_no_share_above_a_hundred_percent():
    records, m = busy_run()
    results = results_of(records, m)
    text = "\n".join(latency_section(results) + stability_section(results))
    shares = [int(x) for x in re.findall(r"(\d+)% (?:of|\|)", text)]
    assert shares and max(shares) <= 100, text
    assert "above its reference" in text
    assert "split well" not in text  # the 2-thread gains do not grow with S here
    assert "torch's GEMM measured slower on 2 threads" in text or "below fewer threads" in text
    unstable = re.search(r"(\d+) of (\d+) points unstable", text)
    # S=1 to 512 many times 1 thread's time (S=16 to 512 also slower than S=1024), and S=1024
    # above its reference
    assert unstable and unstable.groups() == ("5", "20"), text
    lines = gemm_lines(records, m)
    assert "broken reference: torch at 2 thread(s), S=1024" in " ".join(lines)
    assert not any("%" in line and "of that rate" in line and "13" in line for line in lines)
    (why_2,) = [line for line in why_lines(records, m) if line.startswith("why (2")]
    assert "not measured steadily: no verdict" in why_2


def test_a_faster_gemm_that_loses_the_long_inputs_is_said_to_lose():
    """torch's GEMM 1.3x ORT's, ORT winning S=1024 by 1.5x: not 'the faster library wins'."""
    records = [rec("torch", 1, 16, 2.0), rec("ort-opt", 1, 16, 1.0),
               rec("torch", 1, 1024, 150.0), rec("ort-opt", 1, 1024, 100.0)]  # fmt: skip
    (line,) = why_lines(records, machine({"1": 130.0}, {"1": 100.0}))
    assert "yet at S=1024 ort-opt on the slower GEMM library wins by 1.50x" in line
    (close,) = why_lines(records, machine({"1": 107.0}, {"1": 100.0}))
    assert "within 10%, the GEMM rate does not tell them apart" in close
    assert "wins" not in close


def test_runtimes_within_each_others_noise_have_no_winner():
    records = [rec("torch", 1, 16, 2.0, p90=2.6), rec("ort-opt", 1, 16, 1.8, p90=1.9),
               rec("torch", 1, 64, 4.0), rec("ort-opt", 1, 64, 2.0)]  # fmt: skip
    tie, win = fastest_lines(records)
    assert "within noise" in tie and "fastest" not in tie
    assert "fastest ort-opt (2 ms), 2.00x ahead of torch" in win


def test_why_lines_only_for_runtimes_that_ran():
    records = [rec("ort", 1, 16, 2.0), rec("ort-opt", 1, 16, 1.0)]
    assert why_lines(records, machine({"1": 130.0}, {"1": 100.0})) == []


def test_latency_ratios_on_both_sides_of_one_are_noise():
    assert "noise, not an effect" in latency_effect(0.97, 1.40, "ln-eps", "baseline")
    assert latency_effect(0.98, 1.03, "ln-eps", "baseline") == "no latency effect beyond noise"
    assert latency_effect(1.2, 1.4, "palm", "baseline").startswith("latency ratios 1.20x to 1.40x")


def test_a_slope_is_named_against_the_flop_count():
    assert scaling_word(1.02, 1.0) == "as its FLOPs predict"
    assert "re-run before relying on it" in scaling_word(1.6, 1.0)
    assert scaling_word(1.6) == "a super-linear effect"


def test_the_recorded_report_renders_no_share_above_a_hundred_percent():
    results = json.loads((DOCS / "report.json").read_text())
    text = "\n".join(latency_section(results))
    shares = [int(x) for x in re.findall(r"(\d+)%", text)]
    assert shares and all(s <= 100 for s in shares), text
