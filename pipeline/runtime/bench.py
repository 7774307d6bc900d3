"""Forward-pass latency, ONNX Runtime side by side with eager PyTorch.

For each (variant, threads, seq_len) every runtime is warmed up, then the runtimes take turns,
one forward each, so that drift on a shared machine hits all of them alike. Timings are
per-forward wall-clock (perf_counter) around the runtime call, inputs prepared beforehand.
"""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import psutil

from ..config import get_variant
from .session import FLAVOUR_OF


@dataclass
class Record:
    runtime: str
    variant: str
    threads: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    gflops: float  # achieved, from the config's FLOP count and p50
    batch: int = 1
    gemm_gflops: float = float("nan")  # a 1024^3 fp32 MatMul at this thread count, measured in the same run

    @property
    def peak_share(self) -> float:
        """The forward's GFLOP/s as a share of the GEMM rate: how far from the machine's limit."""
        return self.gflops / self.gemm_gflops

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_share": self.peak_share}


def summarize(runtime: str, variant: str, threads: int, seq_len: int, times_ms: Sequence[float],
              batch: int = 1, gemm_gflops: float = float("nan")) -> Record:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    flops = batch * get_variant(variant).config.forward_flops(seq_len)
    return Record(runtime, variant, threads, seq_len, p50, p90, p99, float(t.mean()),
                  float(t.std(ddof=1)) if t.size > 1 else 0.0, int(t.size), flops / (p50 * 1e-3) / 1e9, batch,
                  gemm_gflops)


def default_threads() -> list[int]:
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return list(range(1, physical + 1))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_peak_gflops(threads: int = 1, size: int = 1024, repeat: int = 10) -> float:
    """A practical ceiling for the forward's GFLOP/s: the best of a few size^3 fp32 MatMuls in ORT."""
    from ..parallel.kmatmul import _session

    session = _session(np.float32, threads)
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    for _ in range(2):
        session.run(None, {"A": a, "B": a})
    best = min(_timed(lambda: session.run(None, {"A": a, "B": a})) for _ in range(repeat))
    return 2 * size ** 3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_info() -> dict:
    from ..export.onnx_export import tool_versions

    return {"cpu": cpu_name(), "cores_physical": psutil.cpu_count(logical=False),
            "gemm_peak_gflops_1_thread": round(gemm_peak_gflops(1), 1),
            "cores_logical": psutil.cpu_count(logical=True), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "versions": tool_versions()}


def bench_inputs(seq_lens: Iterable[int], vocab_size: int = 512, seed: int = 1234, batch: int = 1
                 ) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.integers(0, vocab_size, (batch, n), dtype=np.int64) for n in seq_lens}


def time_interleaved(runners: dict[str, Callable[[], object]], warmup: int, repeat: int,
                     max_seconds: Optional[float] = None) -> dict[str, list[float]]:
    """Warm every runner up, then alternate them (order rotating each round) for `repeat` rounds,
    or fewer (at least 5) if `max_seconds` runs out."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    start = time.perf_counter()
    for i in range(repeat):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and i >= 4 and time.perf_counter() - start > max_seconds:
            break
    return times


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def speedups(records: list[Record], baseline: str = "torch") -> list[dict]:
    """baseline p50 / runtime p50 for every other runtime at each (variant, threads, seq_len)."""
    by_key = {(r.runtime, r.variant, r.threads, r.seq_len): r for r in records}
    rows = []
    for r in records:
        ref = by_key.get((baseline, r.variant, r.threads, r.seq_len))
        if r.runtime != baseline and ref is not None:
            rows.append({"runtime": r.runtime, "variant": r.variant, "threads": r.threads, "seq_len": r.seq_len,
                         f"{baseline}_p50_ms": ref.p50_ms, "p50_ms": r.p50_ms, "speedup": ref.p50_ms / r.p50_ms})
    return rows


def run_bench(runtimes: Sequence[str], variants: Sequence[str], threads: Sequence[int], seq_lens: Sequence[int],
              warmup: int = 3, repeat: int = 20, weights=None, out_dir="exported",
              max_seconds_per_point: Optional[float] = 4.0,
              on_point: Optional[Callable[[list[Record]], None]] = None, batch: int = 1) -> list[Record]:
    """Latency records for every (runtime, variant, threads, seq_len); the runtimes of one
    (variant, threads, seq_len) point are timed interleaved."""
    from pathlib import Path

    from ..api import load_model
    from ..weights import load_state_dict, weights_path
    from .session import OrtRunner, TorchRunner
    from ..export import ensure_export

    cfg = get_variant(variants[0]).config  # one size per call
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg)
    inputs = bench_inputs(seq_lens, cfg.vocab_size, batch=batch)
    records: list[Record] = []
    gemm: dict[int, float] = {}  # threads -> GEMM GFLOP/s, measured between the points of this run
    for variant in variants:
        files = {rt: ensure_export(variant, weights, Path(out_dir), state_dict, FLAVOUR_OF[rt])
                 for rt in runtimes if rt in FLAVOUR_OF}
        model = load_model(variant, state_dict=state_dict) if "torch" in runtimes else None
        for n_threads in threads:
            if n_threads not in gemm:
                gemm[n_threads] = gemm_peak_gflops(n_threads)
            runners = {rt: (TorchRunner(model, n_threads) if rt == "torch" else OrtRunner(files[rt], n_threads))
                       for rt in runtimes}
            for seq_len in seq_lens:
                ids = inputs[seq_len]
                times = time_interleaved({rt: (lambda r=r: r.run(ids)) for rt, r in runners.items()},
                                         warmup, repeat, max_seconds_per_point)
                point = [summarize(rt, variant, n_threads, seq_len, t, batch, gemm[n_threads])
                         for rt, t in times.items()]
                records.extend(point)
                if on_point:
                    on_point(point)
    return records


def bench_json(records: list[Record]) -> dict:
    return {"machine": machine_info(), "records": [r.to_dict() for r in records],
            "speedups_vs_torch": speedups(records)}


def plot_latency(records: list[Record], path) -> None:
    """Latency vs sequence length, one line per runtime and thread count (log-log), per variant."""
    from ..fileio import pyplot, save_png

    plt = pyplot()

    variants = sorted({r.variant for r in records}, key=[r.variant for r in records].index)
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4.2), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        keys = sorted({(r.runtime, r.threads) for r in records if r.variant == variant})
        for runtime, n_threads in keys:
            pts = sorted((r.seq_len, r.p50_ms, r.p90_ms) for r in records
                         if (r.variant, r.runtime, r.threads) == (variant, runtime, n_threads))
            xs, p50, p90 = zip(*pts)
            line, = ax.plot(xs, p50, marker="o", label=f"{runtime}, {n_threads} thread{'s' * (n_threads > 1)}",
                            linestyle="-" if runtime == "torch" else "--")
            ax.fill_between(xs, p50, p90, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("forward latency, p50 ms (band: p90)")
        ax.set_title(variant)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


CSV_FIELDS = ["runtime", "variant", "threads", "batch", "seq_len", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "runs",
              "gflops", "gemm_gflops", "peak_share"]


def records_csv(records: list[Record]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in records:
        writer.writerow(r.to_dict())
    return buf.getvalue()


def profile_ops(path, seq_len: int = 1024, threads: int = 1, runs: int = 5, vocab_size: int = 512) -> dict:
    """Kernel time per op type of one forward (mean of `runs` after a warm-up), from ONNX Runtime's
    own profiler: where the time goes, to set beside the FLOP bound."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(0, vocab_size, (1, seq_len), dtype=np.int64)
        for _ in range(runs + 1):  # the first is the warm-up, left out below
            session.run(None, {"input_ids": ids})
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = model_runs[0]["ts"] + model_runs[0]["dur"]
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= warm_end:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {"seq_len": seq_len, "threads": threads,
            "ms_per_forward": {op: us / runs / 1e3 for op, us in per_op.most_common()},
            "total_ms": total / runs / 1e3}
