"""The K-split MatMul: exact against numpy, and robust to dead workers, signals and bad input."""

import os
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import run

from pipeline.parallel import KSplitMatMul, WorkerError, parallel_matmul, split_sizes
from pipeline.parallel.bench import bench, check, single_process


@pytest.mark.parametrize(
    "dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128, np.longdouble]
)
def test_k_split_refuses_what_it_would_not_compute_exactly(dtype):
    a = np.full((3, 4), 2**25 + 1).astype(dtype)
    with pytest.raises(ValueError, match="computes float32 or float64 only"):
        parallel_matmul(a, a.T.copy(), workers=2)


def test_k_split_refuses_ints_in_a_pool_too():
    with KSplitMatMul(1) as pool:
        with pytest.raises(ValueError, match="A has dtype int64"):
            pool.load(np.ones((2, 2), np.int64), np.ones((2, 2)))
        eye = np.eye(2, dtype=np.float32)
        assert np.array_equal(pool(eye, eye), eye)  # still usable


def test_a_pool_shared_between_threads():
    rng = np.random.default_rng(0)
    errors, results = [], {}
    with KSplitMatMul(2, dtype="float64") as pool:

        def work(t):
            try:
                for i in range(15):
                    a, b = rng.standard_normal((8 + t, 16)), rng.standard_normal((16, 5 + i))
                    c = pool(a, b)
                    results[(t, i)] = float(np.abs(c - a @ b).max())
            except Exception as exc:  # noqa: BLE001  (collected and asserted below)
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    assert not errors
    assert len(results) == 45 and max(results.values()) < 1e-12


def rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(dtype)


def shm_segments():
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def workers_alive():
    """Spawned worker processes (not multiprocessing's long-lived resource tracker)."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch):
    """This test's workers and segments are gone at its end (only its own: other processes on
    the machine may hold segments of theirs)."""
    from pipeline.parallel import kmatmul

    made = []
    init = kmatmul.Segment.__init__

    def recording_init(self, *args):
        init(self, *args)
        made.append(self.name.lstrip("/"))

    monkeypatch.setattr(kmatmul.Segment, "__init__", recording_init)
    yield
    deadline = time.monotonic() + 5
    while workers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers_alive(), "worker processes left behind"
    assert not set(made) & shm_segments(), "shared memory left behind"


def test_split_sizes():
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(5, 5) == [1] * 5
    assert split_sizes(7, 2, [6, 1]) == [6, 1]
    for bad in ([3, 3], [0, 7], [8, -1]):
        with pytest.raises(ValueError, match="sum to K"):
            split_sizes(7, 2, bad)
    with pytest.raises(ValueError, match="between 1 and K"):
        split_sizes(3, 4)
    with pytest.raises(ValueError, match="between 1 and K"):
        split_sizes(3, 0)


@pytest.mark.parametrize(
    "n, k, m, workers",
    [
        (1, 1, 1, 1),
        pytest.param(37, 101, 23, 3, marks=pytest.mark.slow),
        pytest.param(64, 5, 1, 5, marks=pytest.mark.slow),
        (1, 300, 17, 2),
    ],
)
def test_float64_matches_numpy(n, k, m, workers):
    a, b = rand((n, k)), rand((k, m))
    c = parallel_matmul(a, b, workers=workers)
    ref = a @ b
    assert c.dtype == np.float64 and c.shape == (n, m)
    assert np.abs(c - ref).max() <= 1e-12 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_float32_within_rounding_of_float64():
    a, b = rand((128, 513), np.float32), rand((513, 96), np.float32)
    c = parallel_matmul(a, b, workers=3)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert c.dtype == np.float32
    assert np.abs(c - ref).max() <= 1e-5 * np.abs(ref).max()
    assert check(c, a, b, "float32")["passed"]


@pytest.mark.slow
def test_uneven_explicit_splits():
    a, b = rand((20, 11)), rand((11, 9))
    c = parallel_matmul(a, b, workers=3, splits=[1, 7, 3])
    assert np.abs(c - a @ b).max() <= 1e-12 * np.abs(a @ b).max()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_valued_inputs_are_bitwise_identical(dtype):
    rng = np.random.default_rng(3)
    a = rng.integers(-16, 16, (70, 129)).astype(dtype)
    b = rng.integers(-16, 16, (129, 45)).astype(dtype)
    single = single_process(a, b)
    for workers in (2, 3, 4):
        c = parallel_matmul(a, b, workers=workers)
        assert np.array_equal(c, single) and np.array_equal(c, a @ b)


def test_pool_reuse_and_same_bits_each_time():
    a, b = rand((50, 40), np.float32), rand((40, 30), np.float32)
    with KSplitMatMul(2) as pool:
        first = pool(a, b)
        again = pool.compute()
        other = pool(b.T.copy(), a.T.copy())
    assert np.array_equal(first, again)
    assert np.allclose(other, (a @ b).T, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_gloo_world_sizes_2_and_3():
    a, b = rand((33, 70)), rand((70, 21))
    c = parallel_matmul(a, b, workers=2, transport="gloo")
    assert np.abs(c - a @ b).max() <= 1e-12 * np.abs(a @ b).max()
    # three ranks on an uneven split of K (31 = 11 + 10 + 10), exact on integer values
    ai = np.random.default_rng(1).integers(-9, 9, (16, 31)).astype(np.float32)
    bi = np.random.default_rng(2).integers(-9, 9, (31, 8)).astype(np.float32)
    assert np.array_equal(parallel_matmul(ai, bi, workers=3, transport="gloo"), ai @ bi)


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.ones((3, 4)), np.ones((5, 2)), "inner dimensions differ"),
        (np.ones(4), np.ones((4, 2)), "must be 2-D"),
        (np.ones((3, 4, 1)), np.ones((4, 2)), "must be 2-D"),
    ],
)
def test_bad_shapes(a, b, message):
    with pytest.raises(ValueError, match=message):
        parallel_matmul(a, b, workers=2)


def test_bad_worker_counts():
    with pytest.raises(ValueError, match="between 1 and K=4"):
        parallel_matmul(np.ones((2, 4)), np.ones((4, 2)), workers=5)
    with pytest.raises(ValueError, match="workers must be"):
        KSplitMatMul(0)


def test_worker_killed_mid_call_raises_and_cleans_up():
    a, b = rand((1500, 1500)), rand((1500, 1500))
    pool = KSplitMatMul(2, dtype="float64", timeout=60)
    pool.load(a, b)
    segments = pool.segment_names()
    victim = pool.processes[1]
    threading.Timer(0.05, victim.kill).start()
    start = time.monotonic()
    with pytest.raises(WorkerError, match="worker 1 .* died"):
        for _ in range(50):
            pool.compute()
    assert time.monotonic() - start < 30
    assert not pool.processes and not any(p.is_alive() for p in [victim])
    assert not set(segments) & shm_segments()


def test_worker_that_raises_reports_its_error():
    pool = KSplitMatMul(2)
    spec = ("psm_does_not_exist", (2, 2), "<f4")
    pool._conns[0].send(("layout", spec, spec, spec, [], (0, 1), (0, 1)))
    with pytest.raises(WorkerError, match="worker 0 raised:(.|\n)*FileNotFoundError"):
        pool._gather("ok")
    assert not pool.processes


@pytest.mark.slow
def test_timeout_does_not_hang():
    """The call timeout bounds a product's answer, not the workers' start: starting two processes
    that import ORT took over 1 s on a loaded machine, which once failed this test 2 runs in 4."""
    pool = KSplitMatMul(2, timeout=1.0)
    pool.timeout = 30.0  # the layout below must not be what times out either
    pool.load(rand((4, 4), np.float32), rand((4, 4), np.float32))
    pool.timeout = 1.0
    os.kill(pool.processes[0].pid, 19)  # SIGSTOP: alive but never answers
    start = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer within 1 s"):
        pool.compute()
    assert time.monotonic() - start < 10


def test_closed_pool_refuses_work():
    pool = KSplitMatMul(1)
    pool.close()
    with pytest.raises(WorkerError, match="closed"):
        pool.load(np.ones((2, 2)), np.ones((2, 2)))


def test_segments_are_reused_per_shape_and_inputs_are_shared():
    a, b = rand((60, 50), np.float32), rand((50, 40), np.float32)
    with KSplitMatMul(2) as pool:
        first = pool(a, b)
        names = pool.segment_names()
        again = pool(a * 2, b)  # same shape: same segments, new contents taken by the workers
        assert pool.segment_names() == names
        shared_a, shared_b = pool.inputs(60, 50, 40)
        shared_a[...], shared_b[...] = a, b * 3
        view = pool(shared_a, shared_b, copy=False)  # nothing copied by the caller
        assert np.shares_memory(view, pool.compute(copy=False))
        assert np.allclose(view, (a @ b) * 3, rtol=1e-5, atol=1e-4)
        other = pool(b.T.copy(), a.T.copy())  # a new shape: new segments
        assert set(pool.segment_names()).isdisjoint(names)
    assert np.allclose(first, a @ b, rtol=1e-5, atol=1e-4) and np.allclose(
        again, 2 * (a @ b), rtol=1e-5, atol=1e-4
    )
    assert np.allclose(other, (a @ b).T, rtol=1e-5, atol=1e-4)


def test_bench_harness_records():
    a, b = rand((64, 64), np.float32), rand((64, 64), np.float32)
    rows = bench(a, b, workers=2, repeat=2)
    assert len(rows) == 6 and rows[0]["speedup"] == 1.0
    assert "pool.inputs()" in rows[5]["method"]
    assert all(r["p50_ms"] > 0 for r in rows)
    assert rows[3]["efficiency"] == pytest.approx(rows[3]["speedup"] / 2)


INTERRUPTED_SCRIPT = """
import json, signal, sys, numpy as np
# a runner started in the background by a non-interactive shell hands SIGINT down ignored, and
# Python then installs no KeyboardInterrupt handler: restore it, as an interactive ^C would find it
signal.signal(signal.SIGINT, signal.default_int_handler)
from pipeline.parallel import KSplitMatMul
pool = KSplitMatMul(2, dtype="float64")
a = np.random.default_rng(0).standard_normal((1200, 1200))
pool.load(a, a)
print(json.dumps({"pids": [p.pid for p in pool.processes], "segments": pool.segment_names()}), flush=True)
while True:
    pool.compute()
"""


def test_interrupt_leaves_no_orphans_or_segments():
    import json
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    info = json.loads(proc.stdout.readline())
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [
        p
        for p in info["pids"]
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not set(info["segments"]) & shm_segments()


@pytest.mark.slow
def test_torchrun_ranks_on_loopback():
    """The multi-host entry point, as torchrun starts it on each host (here: 2 ranks, one host)."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "pipeline.parallel.dist",
            "--size-n",
            "40",
            "--size-k",
            "77",
            "--size-m",
            "9",
            "--dtype",
            "float64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "world 2: C [40, 9]" in out.stdout and "(ok)" in out.stdout


def test_matmul_cli_check(tmp_path):
    import json

    result = run(
        "matmul",
        "--n",
        "30",
        "--k",
        "50",
        "--m",
        "20",
        "--workers",
        "3",
        "--dtype",
        "float64",
        "--check",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["splits"] == [17, 17, 16] and data["check"]["passed"]
    assert data["check"]["max_rel_vs_float64"] <= 1e-12
    bad = run("matmul", "--n", "3", "--k", "2", "--m", "3", "--workers", "3")
    assert bad.exit_code == 1 and "between 1 and K=2" in bad.stderr


def test_worker_dead_between_calls_raises_worker_error():
    """A worker that died while idle: the next send hits a broken pipe, reported as WorkerError."""
    pool = KSplitMatMul(2)
    pool.load(rand((4, 4), np.float32), rand((4, 4), np.float32))
    pool.processes[1].kill()
    pool.processes[1].join()
    with pytest.raises(WorkerError, match="worker 1 .* died"):
        pool.compute()
    assert not pool.processes


def test_a_pool_refuses_to_narrow_its_inputs():
    """float64 inputs to a float32 pool once came back as float32 0 ([[1+1e-12, 1]] @ [[1], [-1]]),
    and 1e300 as inf; widening float32 into a float64 pool is exact and allowed."""
    a, b = np.array([[1 + 1e-12, 1.0]]), np.array([[1.0], [-1.0]])
    with KSplitMatMul(1) as pool:
        with pytest.raises(ValueError, match="narrowing"):
            pool(a, b)
    with KSplitMatMul(1, dtype="float64") as pool:
        assert pool(a, b)[0, 0] == pytest.approx(1e-12, rel=1e-3)
        assert pool(a.astype(np.float32), b.astype(np.float32)).dtype == np.float64


def test_a_forked_child_neither_uses_nor_closes_the_parents_pool():
    import os

    a, b = rand((4, 6)), rand((6, 3), seed=1)
    with KSplitMatMul(2, dtype="float64") as pool:
        pid = os.fork()
        if pid == 0:  # the child: the pool is refused, and exiting must leave the parent's alone
            try:
                pool(a, b)
                code = 3
            except WorkerError as exc:
                code = 0 if "forked child" in str(exc) else 4
            try:
                pool._finalizer()  # what the child's normal exit runs
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        np.testing.assert_allclose(
            pool(a, b), a @ b, rtol=1e-12
        )  # still the parent's, still working


def test_a_layout_larger_than_shared_memory_is_refused_before_any_segment(monkeypatch):
    """100000 x 100000 float32 operands need 40 GB: a clear error, not a SIGBUS, and no segment."""
    import shutil

    from pipeline.parallel import kmatmul, segments

    made = []
    segment = kmatmul.Segment
    monkeypatch.setattr(kmatmul, "Segment", lambda *a: made.append(a) or segment(*a))
    with KSplitMatMul(2) as pool:
        with pytest.raises(ValueError, match="MiB of shared memory"):
            pool.inputs(100000, 100000, 1)
        assert made == [] and pool.segment_names() == []
    usage = shutil.disk_usage(segments.SHM_DIR)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda d: usage._replace(free=1000)
    )  # a tiny /dev/shm
    with KSplitMatMul(1) as pool, pytest.raises(ValueError, match="has 0 MiB free"):
        pool(rand((16, 16)).astype(np.float32), rand((16, 16)).astype(np.float32))


@pytest.mark.parametrize("workers", [True, 2.5, "2"])
def test_workers_must_be_an_integer(workers):
    with pytest.raises(ValueError, match="integer"):
        KSplitMatMul(workers=workers)


@pytest.mark.parametrize("splits", [[2.9, 4.9], [3.0, 4.0], [True, 6]])
def test_splits_must_be_integers(splits):
    """int(2.9) is 2: a fractional split was once computed as another split without a word."""
    with pytest.raises(ValueError, match="must be integers"):
        split_sizes(7, 2, splits)
    assert split_sizes(7, 2, [np.int64(3), 4]) == [3, 4]


def test_a_masked_array_with_masked_entries_is_refused():
    """np.asarray drops the mask: the hidden values would be multiplied as data."""
    a = np.ma.masked_array([[1.0, 1e300]], mask=[[False, True]])
    b = np.array([[1.0], [1.0]])
    with pytest.raises(ValueError, match="masked array with 1 masked"):
        parallel_matmul(a, b, workers=1)
    unmasked = np.ma.masked_array([[1.0, 2.0]], mask=False)
    assert parallel_matmul(unmasked, b, workers=1).tolist() == [[3.0]]


def run_script(body: str, timeout: float = 120):
    """A snippet in its own interpreter: a SIGSEGV or a normal sys.exit there cannot take pytest
    with it. The snippet's main runs under `if __name__ == "__main__"` (spawned workers import it)."""
    import subprocess
    import sys
    import textwrap

    script = (
        "import os, sys\nimport numpy as np\n"
        "from pipeline.parallel import KSplitMatMul, WorkerError\n"
        "def main():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
        "if __name__ == '__main__':\n    main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )


def test_arrays_outlive_their_pool():
    """copy=False's C and inputs()'s A, B read after close() and after a new layout were a SIGSEGV
    (exit 139): SharedMemory.close() unmapped them under the arrays."""
    out = run_script("""
        pool = KSplitMatMul(2)
        a, b = pool.inputs(4, 6, 3)
        a[...], b[...] = 1.0, 2.0
        c = pool.compute(copy=False)
        pool(np.ones((50, 40), np.float32), np.ones((40, 30), np.float32))  # a new layout
        old = (float(c.sum()), float(a.sum()), float(b.sum()))
        c2 = pool.compute(copy=False)
        pool.close()
        print(old, float(c2.sum()), float(c.sum()))
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == "(144.0, 24.0, 36.0) 60000.0 144.0".split()


def test_an_old_inputs_array_never_writes_into_a_new_layout():
    """With small shapes a new layout's segments were mapped where the old ones had been, so a write
    to an old inputs() array changed the next product (max|C - a@b| 4.01 against 4.81)."""
    a, b = rand((3, 5), np.float32), rand((5, 2), np.float32, seed=1)
    with KSplitMatMul(2) as pool:
        old_a, old_b = pool.inputs(4, 6, 3)
        for trial in range(20):  # the allocator reuses freed addresses: give it many chances
            shape = (3 + trial % 2, 5, 2)
            pool.inputs(*shape)
            x, y = rand(shape[:2], np.float32, trial), rand(shape[1:], np.float32, trial + 1)
            pool.load(x, y)
            old_a[...], old_b[...] = 1e6, -1e6
            np.testing.assert_allclose(pool.compute(), x @ y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pool(a, b), a @ b, rtol=1e-5, atol=1e-5)


def test_inputs_written_after_a_compute_are_what_the_next_compute_multiplies():
    """B is read in place, A was copied only after inputs(): a second write to the shared A and B
    once gave A_old B_new."""
    a, b = rand((5, 7)), rand((7, 4), seed=1)
    with KSplitMatMul(2, dtype="float64") as pool:
        shared_a, shared_b = pool.inputs(5, 7, 4)
        shared_a[...], shared_b[...] = a, b
        np.testing.assert_allclose(pool.compute(), a @ b, rtol=1e-12)
        shared_a[...], shared_b[...] = 2 * a, 3 * b
        np.testing.assert_allclose(pool.compute(), 6 * (a @ b), rtol=1e-12)


def test_a_forked_child_that_exits_normally_leaves_the_parents_pool_working():
    """sys.exit(0) in a child forked inside `with KSplitMatMul(2)` ran multiprocessing's inherited
    exit handler, which SIGTERMed the parent's workers ('worker 0 died with exit code -15')."""
    out = run_script("""
        a, b = np.ones((4, 6)), np.ones((6, 3))
        with KSplitMatMul(2, dtype="float64") as pool:
            pool(a, b)
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # the child's normal exit: atexit handlers, finalizers
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            print(float(pool(a, b).sum()), [p.is_alive() for p in pool.processes])
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["72.0", "[True,", "True]"]


def test_workers_end_when_their_caller_is_killed():
    """SIGKILL leaves the caller no clean-up: the workers notice by themselves and exit."""
    import signal
    import subprocess
    import sys

    script = (
        "from pipeline.parallel import KSplitMatMul\n"
        "if __name__ == '__main__':\n"
        "    pool = KSplitMatMul(2)\n"
        "    print(*(p.pid for p in pool.processes), flush=True)\n"
        "    import time; time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)]
    finally:
        proc.kill()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_rank_whose_peer_never_reduces_fails_within_its_timeout(tmp_path):
    """A stopped torchrun peer left rank 0 in all_reduce for 30 minutes (gloo's default timeout):
    here rank 1 joins the group and never reduces; rank 0 must fail with one line, in seconds."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    idle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import datetime, time, torch.distributed as d; "
            "d.init_process_group('gloo', timeout=datetime.timedelta(seconds=60)); time.sleep(120)",
        ],
        env={**env, "RANK": "1"},
    )
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.parallel.dist", "--timeout", "3", "--size-k", "8"],
            env={**env, "RANK": "0"},
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        idle.kill()
    assert out.returncode == 1, out.stderr[-2000:]
    assert "all_reduce failed" in out.stderr and "Traceback" not in out.stderr
