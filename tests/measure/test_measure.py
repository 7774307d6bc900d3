"""The measuring harness: statistics, FLOP counts, interleaving, records, files and plots.
Nothing here asserts how fast the machine is."""

import csv
import io
import json
import math

import matplotlib.image
import numpy as np
import pytest
from conftest import run

from pipeline.config import BASE_CONFIG
from pipeline.measure.compare import logit_metrics
from pipeline.measure.forward import (
    CSV_FIELDS,
    ForwardPlan,
    records_csv,
    run_bench,
    speedups,
    summarize,
    time_interleaved,
)
from pipeline.measure.harness import geomean
from pipeline.measure.sweep import fit_quadratic, loglog_slope
from pipeline.workspace import Workspace


def test_percentiles_on_injected_timings():
    times = list(range(1, 101))  # 1..100 ms
    r = summarize("ort", "baseline", 2, 16, times)
    assert (r.p50_ms, r.p90_ms, r.p99_ms) == pytest.approx((50.5, 90.1, 99.01))
    assert r.mean_ms == pytest.approx(50.5) and r.runs == 100
    assert r.std_ms == pytest.approx(math.sqrt(sum((t - 50.5) ** 2 for t in times) / 99))
    assert r.gflops == pytest.approx(BASE_CONFIG.forward_flops(16) / 50.5e-3 / 1e9)
    one = summarize("torch", "baseline", 1, 1, [3.0])
    assert one.p50_ms == one.p99_ms == 3.0 and one.std_ms == 0.0


def test_flop_count_against_a_hand_count():
    # S=1, per layer: qkv 2*256*768 = 393,216; out 2*256*256 = 131,072; MLP 2*2*256*1280 = 1,310,720;
    # scores and weighted values 2*2*1*1*256 = 1,024 -> 1,836,032; x3 layers = 5,508,096;
    # LM head 2*256*512 = 262,144 -> 5,770,240
    assert BASE_CONFIG.forward_flops(1) == 5_770_240
    # S=1024: causal attention needs 1024 * 1025 / 2 = 524,800 query-key pairs per head, 2 * 2 * 524,800
    # * 256 = 537,395,200 (not the full square's 1,073,741,824); per layer 402,653,184 + 134,217,728
    # + 1,342,177,280 + 537,395,200 = 2,416,443,392; x3 = 7,249,330,176; LM head 268,435,456
    assert BASE_CONFIG.forward_flops(1024) == 7_517_765_632


def test_share_of_the_gemm_rate():
    r = summarize("ort", "baseline", 2, 1024, [75.0], gemm_gflops=250.0)
    assert r.peak_share == pytest.approx(7_517_765_632 / 75e-3 / 1e9 / 250.0)
    assert r.to_dict()["peak_share"] == r.peak_share


def test_interleaving_rotates_and_excludes_warmup():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = time_interleaved(runners, warmup=2, rounds=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, not timed
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def test_speedups_and_geomean():
    recs = [
        summarize("torch", "baseline", 1, 8, [4.0]),
        summarize("ort", "baseline", 1, 8, [2.0]),
        summarize("torch", "baseline", 1, 64, [9.0]),
        summarize("ort", "baseline", 1, 64, [1.0]),
    ]
    rows = speedups(recs)
    assert [r["speedup"] for r in rows] == [2.0, 9.0]
    assert geomean(r["speedup"] for r in rows) == pytest.approx(math.sqrt(18))


def test_run_bench_records_and_files(tmp_path, baseline_dir):
    out = baseline_dir
    plan = ForwardPlan(("torch", "ort", "ort-opt"), ("baseline",), (1,), (1, 5), warmup=1, repeat=3)
    records = run_bench(Workspace(out), plan)
    assert {(r.runtime, r.seq_len) for r in records} == {
        (rt, n) for rt in ("torch", "ort", "ort-opt") for n in (1, 5)
    }
    assert all(r.runs == 3 and r.p50_ms > 0 and r.p50_ms <= r.p90_ms <= r.p99_ms for r in records)
    rows = list(csv.DictReader(io.StringIO(records_csv(records))))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == 6


def test_bench_cli_writes_json_csv_and_plot(tmp_path, baseline_dir):
    out = baseline_dir
    paths = {k: tmp_path / f"b.{k}" for k in ("json", "csv", "png")}
    result = run(
        "bench",
        "--runtime",
        "all",
        "--threads",
        "1",
        "--seq-lens",
        "1,3",
        "--warmup",
        "0",
        "--repeat",
        "2",
        "--out",
        str(out),
        "--json",
        str(paths["json"]),
        "--csv",
        str(paths["csv"]),
        "--plot",
        str(paths["png"]),
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "torch/this" in result.stdout and "geometric-mean speed-up" in result.stdout
    data = json.loads(paths["json"].read_text())
    assert {"cpu", "cores_physical", "versions"} <= set(data["machine"])
    fields = {
        "runtime",
        "variant",
        "threads",
        "seq_len",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "std_ms",
        "runs",
    }
    assert len(data["records"]) == 6 and all(fields <= set(r) for r in data["records"])
    assert matplotlib.image.imread(str(paths["png"])).shape[2] in (3, 4)
    bad = run("bench", "--seq-lens", "1,2000")
    assert bad.exit_code == 1 and "more than the model's 1024" in bad.stderr


def test_logit_metrics():
    base = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    same = logit_metrics(base, base)
    assert same["max_abs_diff"] == 0 and same["kl_mean"] == pytest.approx(0, abs=1e-15)
    assert same["top1_agreement_pct"] == 100
    other = base + np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # second row's argmax moves
    m = logit_metrics(base, other)
    assert m["max_abs_diff"] == 2.0 and m["mean_abs_diff"] == pytest.approx(2 / 6)
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 6)) and m["top1_agreement_pct"] == 50
    assert m["rel_l2_error"] == pytest.approx(2 / np.linalg.norm(base))
    p = np.exp(base[1]) / np.exp(base[1]).sum()
    q = np.exp(other[1]) / np.exp(other[1]).sum()
    assert m["kl_max"] == pytest.approx(float((p * np.log(p / q)).sum()))


def test_fits():
    s = np.array([1, 2, 4, 8, 16, 64, 256])
    f = fit_quadratic(s, 0.5 + 0.02 * s + 3e-5 * s**2)
    assert (f["a_ms"], f["b_ms_per_token"], f["c_ms_per_token2"]) == pytest.approx(
        (0.5, 0.02, 3e-5)
    )
    assert f["r2"] == pytest.approx(1.0)
    assert loglog_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)


def test_decode_bench_records(baseline_dir, tmp_path):
    out = baseline_dir
    path = tmp_path / "decode.json"
    result = run(
        "bench",
        "--mode",
        "decode",
        "--threads",
        "1",
        "--batch",
        "1,2",
        "--past-lens",
        "0,3",
        "--new-tokens",
        "3",
        "--repeat",
        "3",
        "--out",
        str(out),
        "--json",
        str(path),
    )
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(path.read_text())
    points = {(r["runtime"], r["batch"], r["past_len"]) for r in data["steps"]}
    assert points == {
        (rt, b, p)
        for rt in ("torch", "torch-recompute", "ort", "ort-opt", "genai")
        for b in (1, 2)
        for p in (0, 3)
    }
    assert all(r["p50_ms"] > 0 and r["runs"] >= 3 for r in data["steps"])
    assert {r["runtime"] for r in data["end_to_end"]} == {
        "torch",
        "torch-recompute",
        "ort",
        "ort-opt",
        "genai",
    }
    assert "bytes per token" in result.stdout and "GFLOP/s" in result.stdout
    assert all(r["runs"] == 5 for r in data["end_to_end"])  # repeated, medians
    assert data["machine"]["memory_gbs"] > 0 and "x floor" in result.stdout
    # progress as plain lines (no terminal here): every step point, then every round of whole
    # generations (silent for minutes at gpt2-124m before they were counted)
    lines = [x for x in result.stderr.splitlines() if x.startswith("decode steps, then whole")]
    assert len(lines) == 4 + 6 and lines[-1].startswith(
        "decode steps, then whole generations: 10/10 3-token generations, threads 1, round 5/5"
    ), result.stderr
    wrong = run("bench", "--mode", "decode", "--runtime", "openvino")
    assert wrong.exit_code == 1 and "does not run the decoder graph" in wrong.stderr


def test_decode_bench_leaves_the_genai_folder_at_default_threads(baseline_dir):
    from pipeline.measure.decode import DecodePlan, run_decode_bench

    out = baseline_dir
    plan = DecodePlan(("baseline",), ("genai",), (1,), (1,), (2,), repeat=3)
    run_decode_bench(Workspace(out), plan, "baseline")
    config = json.loads((out / "baseline.genai" / "genai_config.json").read_text())
    assert "intra_op_num_threads" not in config["model"]["decoder"]["session_options"]


def test_a_decode_steps_floor_by_hand():
    """gpt2-124m: 124.4M weights x 4 B at 10 GB/s is 49.8 ms, its 0.25 GFLOP at 50 GFLOP/s 5 ms:
    memory-bound; the same step at 8 rows and 0.1 GB/s-per-weight compute flips to compute."""
    from pipeline.config import get_variant
    from pipeline.measure.decode import step_floor_ms

    cfg = get_variant("baseline@gpt2-124m").config
    ms, bound = step_floor_ms(cfg, 1, 0, gemm_gflops=50.0, memory_gbs=10.0)
    assert bound == "memory" and ms == pytest.approx(cfg.n_params() * 4 / 10e9 * 1e3)
    ms, bound = step_floor_ms(cfg, 64, 1000, gemm_gflops=1.0, memory_gbs=1000.0)
    flops = 2 * cfg.n_params() * 64 + 4 * 1001 * cfg.d_model * cfg.n_layers * 64
    assert bound == "compute" and ms == pytest.approx(flops / 1e9 * 1e3)


def test_a_quantized_decode_steps_floor_reads_its_stored_bits():
    """gpt2-124m at 4 bits: 85.0M projection weights in half a byte each and the 38.6M head
    weights in a byte each (the default int4 recipe's 8-bit head), a float32 scale per 32, the
    0.8M others (position table, biases, norms) in float32."""
    from pipeline.config import get_variant
    from pipeline.measure.decode import decode_weight_bytes, step_floor_ms

    cfg = get_variant("baseline@gpt2-124m").config
    quantized = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 50257 * 768
    assert cfg.matmul_params() == quantized
    others = cfg.n_params() - quantized
    assert others == 1024 * 768 + 12 * (2304 + 768 + 3072 + 768 + 4 * 768) + 2 * 768
    head = 50257 * 768
    want = (quantized - head) / 2 + head + quantized / 32 * 4 + others * 4
    assert decode_weight_bytes(cfg, 4) == pytest.approx(want, abs=8)
    assert decode_weight_bytes(cfg, 8) == pytest.approx(
        quantized + quantized / 32 * 4 + others * 4, abs=8
    )
    ms, bound = step_floor_ms(cfg, 1, 0, gemm_gflops=50.0, memory_gbs=10.0, weight_bits=4)
    assert bound == "memory" and ms == pytest.approx(want / 10e9 * 1e3, rel=1e-6)
