"""Correctness check and timings for the K-split MatMul against single-process products."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from ..resources import check_memory
from .kmatmul import KSplitMatMul
from .worker import DTYPES, matmul_session

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def matmul_bytes(n: int, k: int, m: int, workers: int, dtype: str) -> int:
    """What `run_matmul` holds at once: the operands drawn in float64 and cast, their copies in
    shared memory, C with a partial per extra worker, and the float64 reference for the check."""
    item = np.dtype(DTYPES[dtype]).itemsize
    operands = (n * k + k * m) * (8 + 2 * item + 8)
    products = n * m * (item * (workers + 2) + 2 * 8)
    return operands + products


def random_inputs(n: int, k: int, m: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, k)).astype(DTYPES[dtype]),
        rng.standard_normal((k, m)).astype(DTYPES[dtype]),
    )


def single_process(a: np.ndarray, b: np.ndarray, threads: int = 1) -> np.ndarray:
    return matmul_session(a.dtype.type, threads).run(None, {"A": a, "B": b})[0]


def check(c: np.ndarray, a: np.ndarray, b: np.ndarray, dtype: str) -> dict:
    """Differences against the single-process ORT MatMul and a float64 reference."""
    single = single_process(a, b)
    ref64 = a.astype(np.float64) @ b.astype(np.float64)
    scale = max(float(np.abs(ref64).max()), 1e-300)
    abs_single = float(np.abs(c.astype(np.float64) - single).max())
    abs_ref = float(np.abs(c.astype(np.float64) - ref64).max())
    return {
        "max_abs_vs_single": abs_single,
        "max_rel_vs_single": abs_single / scale,
        "max_abs_vs_float64": abs_ref,
        "max_rel_vs_float64": abs_ref / scale,
        "bitwise_equal_single": bool(np.array_equal(c, single)),
        "tolerance_rel": TOLERANCE[dtype],
        "passed": abs_ref / scale <= TOLERANCE[dtype],
    }


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(
    a: np.ndarray,
    b: np.ndarray,
    workers: int,
    repeat: int = 5,
    transport: str = "shm",
    pin_cores: bool = True,
) -> list[dict]:
    dtype = "float64" if a.dtype == np.float64 else "float32"
    one, many = matmul_session(a.dtype.type, 1), matmul_session(a.dtype.type, workers)
    rows = [
        {
            "method": "ORT MatMul, 1 process, 1 thread",
            "workers": 1,
            "p50_ms": _median_ms(lambda: one.run(None, {"A": a, "B": b}), repeat),
        },
        {
            "method": f"ORT MatMul, 1 process, {workers} threads",
            "workers": workers,
            "p50_ms": _median_ms(lambda: many.run(None, {"A": a, "B": b}), repeat),
        },
        {
            "method": "numpy (BLAS, its default threads)",
            "workers": None,
            "p50_ms": _median_ms(lambda: a @ b, repeat),
        },
    ]
    with KSplitMatMul(workers, dtype=dtype, transport=transport, pin_cores=pin_cores) as pool:
        pool.load(a, b)
        pool.compute()
        rows.append(
            {
                "method": f"K-split {transport}, {workers} workers: compute (shards resident)",
                "workers": workers,
                "p50_ms": _median_ms(lambda: pool.compute(copy=False), repeat),
            }
        )
        rows.append(
            {
                "method": f"K-split {transport}, {workers} workers: end to end from numpy arrays "
                f"(copy in, distribute, compute, copy C out)",
                "workers": workers,
                "p50_ms": _median_ms(lambda: pool(a, b), repeat),
            }
        )
        shared_a, shared_b = pool.inputs(*a.shape, b.shape[1])
        shared_a[...], shared_b[...] = a, b  # the caller builds its operands in shared memory
        rows.append(
            {
                "method": f"K-split {transport}, {workers} workers: end to end, operands in pool.inputs() "
                f"(distribute, compute, C as a view)",
                "workers": workers,
                "p50_ms": _median_ms(lambda: pool(shared_a, shared_b, copy=False), repeat),
            }
        )
    base = rows[0]["p50_ms"]
    for row in rows:
        row["speedup"] = base / row["p50_ms"]
        row["efficiency"] = row["speedup"] / row["workers"] if row["workers"] else None
    return rows


def run_matmul(
    n: int,
    k: int,
    m: int,
    workers: int,
    dtype: str = "float32",
    seed: int = 0,
    transport: str = "shm",
    pin: bool = True,
    do_bench: bool = False,
    repeat: int = 5,
) -> dict:
    """`pipeline matmul`: C = A B over the K-split pool, checked, and optionally timed."""
    from .operands import split_sizes

    sizes = split_sizes(k, workers)
    check_memory(
        matmul_bytes(n, k, m, workers, dtype),
        f"A[{n}x{k}] B[{k}x{m}] over {workers} workers",
        "use smaller --n, --k or --m",
    )
    a, b = random_inputs(n, k, m, dtype, seed)
    with KSplitMatMul(workers, dtype=dtype, transport=transport, pin_cores=pin) as pool:
        c = pool(a, b)
    result = {
        "n": n,
        "k": k,
        "m": m,
        "workers": workers,
        "splits": sizes,
        "dtype": dtype,
        "transport": transport,
        "check": check(c, a, b, dtype),
    }
    if do_bench:
        result["bench"] = bench(a, b, workers, repeat, transport, pin)
    return result
