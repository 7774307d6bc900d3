"""A run's checks of its own numbers (measure/stability.py), on records made by hand and on load
this test creates itself."""

import multiprocessing
import time

import pytest

from pipeline.measure import stability
from pipeline.measure.forward import Record


def point(runtime, seq_len, p50, p90=None, threads=1, gflops=10.0, gemm=100.0):
    return Record(runtime, "baseline", threads, seq_len, p50, p90 or p50 * 1.05, p50, p50, 0.0, 8,
                  gflops=gflops, gemm_gflops=gemm)  # fmt: skip


def test_a_consistent_run_marks_nothing():
    records = [point("torch", 16, 2.0), point("torch", 256, 10.0), point("torch", 1024, 80.0),
               point("ort-opt", 16, 1.0), point("ort-opt", 1024, 60.0)]  # fmt: skip
    assert stability.unstable_reasons(records) == {}


def test_a_longer_input_finishing_first_marks_both_points():
    """The busy machine's 2-thread torch: S=1024 in 56 ms after S=16 in 103.9 ms."""
    records = [point("torch", 16, 103.9, threads=2), point("torch", 128, 251.8, threads=2),
               point("torch", 1024, 56.0, threads=2)]  # fmt: skip
    reasons = stability.unstable_reasons(records)
    assert set(reasons) == {0, 1, 2}
    assert any("S=1024 (56 ms) ran faster than S=16 (104 ms)" in r for r in reasons[0])
    # a shorter input that is only a little more work may be faster or not: nothing impossible
    close = [point("torch", 16, 2.0), point("torch", 17, 1.9)]
    assert stability.unstable_reasons(close) == {}


def test_a_share_above_the_gemm_rate_names_the_reference_not_a_share():
    records = [point("torch", 1024, 10.0, gflops=134.0, gemm=60.0), point("ort-int8", 16, 1.0,
               gflops=500.0, gemm=60.0)]  # fmt: skip
    reasons = stability.unstable_reasons(records)
    assert list(reasons) == [0]  # int8 work is not the fp32 work the GEMM rate bounds
    assert "measured low" in reasons[0][0] and "%" not in reasons[0][0]


def test_a_wide_spread_is_unstable():
    (why,) = stability.unstable_reasons([point("torch", 16, 2.0, p90=3.5)]).values()
    assert why == ["p90 75% above p50"]


def test_gemm_references_that_fall_with_threads_or_move_are_named():
    before = {"torch": {"1": 91.0, "2": 60.0}, "onnxruntime": {"1": 100.0, "2": 190.0}}
    after = {"torch": {"1": 90.0, "2": 170.0}, "onnxruntime": {"1": 101.0, "2": 185.0}}
    problems = stability.gemm_problems(before, after)
    assert {(p["library"], p["threads"]) for p in problems} == {("torch", 2)}
    texts = " | ".join(p["text"] for p in problems)
    assert "slower on 2 threads (60 GFLOP/s) than on 1 (91)" in texts
    assert "moved from 60 to 170 GFLOP/s" in texts
    assert stability.gemm_problems(after, after) == []


def test_an_unstable_point_is_measured_again_then_kept_marked():
    calls = []

    def measure_ok(seq_len):
        calls.append(seq_len)
        return [point("torch", seq_len, 1.0 + seq_len / 100)]

    group = [point("torch", 16, 2.0, p90=9.0), point("torch", 256, 3.0)]
    fixed = stability.remeasured(group, measure_ok)
    assert calls == [16] and fixed[0].attempts == 2 and fixed[0].stable and fixed[1].attempts == 1

    calls.clear()

    def measure_noisy(seq_len):
        calls.append(seq_len)
        return [point("torch", seq_len, 2.0, p90=9.0)]

    kept = stability.remeasured([point("torch", 16, 2.0, p90=9.0)], measure_noisy)
    assert calls == [16] * stability.REMEASURE
    assert kept[0].attempts == 1 + stability.REMEASURE and not kept[0].stable
    assert kept[0].unstable == ["p90 350% above p50"]


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_other_processes_on_the_cores_make_the_machine_busy():
    """Two spinning processes on this machine's cores (started by the test, stopped after the
    probe, so that their time is not this process's children's)."""
    import psutil

    cores = psutil.cpu_count(logical=True)
    spinners = [multiprocessing.get_context("spawn").Process(target=_spin, args=(30,))
                for _ in range(cores)]  # fmt: skip
    for p in spinners:
        p.start()
    try:
        time.sleep(1.0)  # spawn start-up
        probe = stability.LoadProbe.start()
        time.sleep(1.5)
        load = probe.stop()
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    assert load["busy"] and load["others_cpu_pct"] > 50, load
    (line,) = stability.stability_lines({"points": 0, "unstable": 0, "load": load})
    assert line.startswith("stability: the machine was busy while this ran (other processes used")


@pytest.mark.parametrize("unstable, expected", [(0, "all 3 points stable"), (1, "1 of 3 points")])
def test_the_summary_line_counts_points(unstable, expected):
    summary = stability.stability_summary(["torch/baseline/1t/S=16: p90 75% above p50"][:unstable],
                                          3, None)  # fmt: skip
    assert expected in " ".join(stability.stability_lines(summary))


def test_more_threads_taking_many_times_as_long_is_unstable():
    """The busy run's torch: 5.75 ms on 1 thread, 216 ms on 2 at S=16."""
    records = [point("torch", 16, 5.75), point("torch", 16, 215.9, threads=2),
               point("ort-opt", 16, 1.7), point("ort-opt", 16, 2.2, threads=2)]  # fmt: skip
    reasons = stability.unstable_reasons(records)
    assert list(reasons) == [1]
    assert reasons[1] == ["38x the time on 2 threads as on 1: the other cores were not free"]
