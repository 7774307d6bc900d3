"""The one measuring harness: the interleaved timing loop, its statistics and the machine.

Every benchmark (forward, decode, attention, compare, sweep) times its runtimes with
`time_interleaved` and summarises with `Stats.of`; every record of a run shares one `machine()`
description, whose GEMM rates are measured once per process and thread count.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

GEMM_SIZE = 1024
GEMM_WARMUP_S = 0.5
# the instruction-set extensions that decide which kernels the GEMM libraries pick
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@dataclass(frozen=True)
class Stats:
    """Per-call wall-clock statistics of one runtime at one point, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    runs: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> Stats:
        t = np.asarray(times_ms, dtype=np.float64)
        if t.size == 0 or not np.isfinite(t).all():
            raise ValueError(
                f"timings must be a non-empty list of finite numbers, got {list(times_ms)[:5]}"
            )
        p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
        std = float(t.std(ddof=1)) if t.size > 1 else 0.0
        return cls(p50, p90, p99, float(t.mean()), std, int(t.size))

    def to_dict(self) -> dict:
        return asdict(self)


def turn_order(names: list, i: int) -> list:
    """Round i's order: the names rotated by i, so that no runner always goes first."""
    return names[i % len(names) :] + names[: i % len(names)]


def take_turns(
    runners: dict[str, Callable[[], object]],
    rounds: int,
    on_round: Optional[Callable[[int], None]] = None,
) -> dict[str, list]:
    """What each runner returns, one call each per round, the order rotating (turn_order);
    on_round(i) after round i. For runs that time themselves (a whole generation)."""
    results: dict[str, list] = {name: [] for name in runners}
    names = list(runners)
    for i in range(rounds):
        for name in turn_order(names, i):
            results[name].append(runners[name]())
        if on_round:
            on_round(i)
    return results


def time_interleaved(
    runners: dict[str, Callable[[], object]],
    warmup: int,
    rounds: int,
    max_seconds: Optional[float] = None,
    burst: int = 1,
    min_rounds: int = 5,
) -> dict[str, list[float]]:
    """Per-call times (ms) of every runner, the runners taking turns so that drift on a shared
    machine hits them alike.

    Each runner is warmed up `warmup` times; then for `rounds` rounds (fewer, but at least
    `min_rounds`, once `max_seconds` has passed) each runner in turn, the order rotating, runs
    a burst of `burst` calls. With burst > 1 the first call of each burst only re-warms the
    caches the other runners evicted and is not counted: a decode loop runs its steps back to
    back, and timing single steps between other runtimes' work would charge each for cold caches.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names, start = list(runners), time.perf_counter()
    for i in range(rounds):
        for name in turn_order(names, i):
            fn = runners[name]
            if burst > 1:
                fn()
            for _ in range(max(1, burst - 1)):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        if (
            max_seconds is not None
            and i + 1 >= min_rounds
            and time.perf_counter() - start > max_seconds
        ):
            break
    return times


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def available_cores() -> int:
    """The cores this process may run on (its affinity), which is what threads can use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> list[int]:
    """1 .. the physical cores this process may use."""
    import psutil

    physical = psutil.cpu_count(logical=False) or available_cores()
    return list(range(1, min(physical, available_cores()) + 1))


def cpu_name() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU has, as /proc/cpuinfo names them."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.readlines()
    except OSError:
        return []


def _gemm_ort(threads: int, a: np.ndarray) -> Callable[[], object]:
    from ..parallel.worker import matmul_session

    session = matmul_session(np.float32, threads)
    return lambda: session.run(None, {"A": a, "B": a})


def _gemm_torch(threads: int, a: np.ndarray) -> Callable[[], object]:
    import torch

    t = torch.from_numpy(a)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return torch.mm(t, t)

    return run


def _gemm_openvino(threads: int, a: np.ndarray) -> Callable[[], object]:
    import tempfile

    import openvino as ov

    from ..parallel.worker import matmul_graph

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/matmul.onnx"
        with open(path, "wb") as f:
            f.write(matmul_graph(np.float32))
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
    request = compiled.create_infer_request()
    return lambda: request.infer({0: a, 1: a})


GEMM_LIBRARIES: dict[str, Callable[[int, np.ndarray], Callable[[], object]]] = {
    "onnxruntime": _gemm_ort,  # MLAS
    "torch": _gemm_torch,  # its CPU BLAS
    "openvino": _gemm_openvino,  # oneDNN; measured only in runs that time OpenVINO
}
ALWAYS_MEASURED = ("onnxruntime", "torch")
_gemm_cache: dict[tuple[str, int], float] = {}


def gemm_gflops(
    library: str = "onnxruntime", threads: int = 1, repeat: int = 10, again: bool = False
) -> float:
    """The best of a few 1024^3 fp32 matmuls in this library, in GFLOP/s: a practical ceiling for
    a forward's rate. Measured once per process, library and thread count; again=True measures
    anew (after the timed work, to see whether the machine changed) and keeps the first rate."""
    key = (library, threads)
    if again:
        return _measure_gemm(library, threads, repeat)
    if key not in _gemm_cache:
        _gemm_cache[key] = _measure_gemm(library, threads, repeat)
    return _gemm_cache[key]


def _measure_gemm(library: str, threads: int, repeat: int) -> float:
    a = np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(np.float32)
    run = GEMM_LIBRARIES[library](threads, a)
    # warm for half a second, not two calls: a cold first measurement (thread pool start-up,
    # page faults, clock ramp) read 66 GFLOP/s where the same run's last read 89
    start = time.perf_counter()
    while time.perf_counter() - start < GEMM_WARMUP_S:
        run()
    return 2 * GEMM_SIZE**3 / min(_seconds(run) for _ in range(repeat)) / 1e9


_bandwidth_cache: dict[str, float] = {}
COPY_BYTES = 256 * 2**20  # far beyond any cache level, so the copy runs at DRAM speed


def memory_bandwidth_gbs(repeat: int = 5) -> float:
    """The best of a few copies of 256 MiB in GB/s, counting the bytes read and written: the rate
    a decode step that streams its weights can approach. Measured once per process."""
    if "copy" not in _bandwidth_cache:
        src = np.ones(COPY_BYTES // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # fault the pages in first
        best = min(_seconds(lambda: np.copyto(dst, src)) for _ in range(repeat))
        _bandwidth_cache["copy"] = 2 * COPY_BYTES / best / 1e9
    return _bandwidth_cache["copy"]


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gemm_again(rates: dict) -> dict:
    """The GEMM rates of a machine() record measured once more, in the same shape."""
    return {
        lib: {t: round(gemm_gflops(lib, int(t), repeat=5, again=True), 1) for t in by_threads}
        for lib, by_threads in rates.items()
    }


def machine(threads: Sequence[int] = (1,)) -> dict:
    """The machine a run measured on: CPU, ISA, cores, memory, versions and each library's GEMM
    rate at each thread count (measured once per process)."""
    import psutil

    from ..version import tool_versions

    return {
        "cpu": cpu_name(),
        "isa": isa_flags(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_usable": available_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "versions": tool_versions(),
        "memory_gbs": round(memory_bandwidth_gbs(), 1),
        "gemm_gflops": {
            lib: {str(t): round(gemm_gflops(lib, t), 1) for t in threads}
            for lib in GEMM_LIBRARIES
            if lib in ALWAYS_MEASURED or any((lib, t) in _gemm_cache for t in threads)
        },
    }
