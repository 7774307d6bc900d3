"""C = A B with the inner dimension K split across worker processes.

Worker i multiplies A[:, K_i] by B[K_i, :] in its own ONNX Runtime session (a one-node ONNX
MatMul); the partial products A_i B_i sum to C. Everything large lives in POSIX shared memory,
created once per shape and reused while the shape stays: the inputs A and B, C, and one partial
per worker after the first. Nothing large is pickled, and the caller copies at most A and B once:

- B's row block is contiguous, so worker i binds it straight from the shared B (no copy);
- A's column block is copied by worker i into its own buffer, the workers in parallel;
- `pool.inputs(n, k, m)` hands out the shared A and B to fill in place: then the caller copies
  nothing; `compute(copy=False)` returns C itself (overwritten by the next call) instead of a copy.

Arrays handed out stay safe to read and write for as long as the caller holds them: a segment's
name is unlinked when its layout is replaced or the pool closes, but its mapping lives until the
last array made from it is gone (so no read is ever a SIGSEGV, and an old array never aliases a
new layout's memory). A forked child inherits the pool object but never touches its workers.

Two transports combine the partials:
- "shm": worker 0 writes its product straight into C, the others into their partials, then the
  workers reduce-scatter: worker i adds the partials into its block of C's rows, in rank order
  (a deterministic reduction);
- "gloo": the workers are torch.distributed ranks and combine with all_reduce(SUM), as tensor
  parallelism does across machines; rank 0 writes C. See dist.py for ranks on several hosts.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.process
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import Optional

import numpy as np

from .operands import as_operands, check_pool_options, split_sizes
from .segments import Segment, check_shared_memory
from .worker import DTYPES, serve

START_TIMEOUT_S = 120.0  # a worker's start: spawn, import onnxruntime, make its session


class WorkerError(RuntimeError):
    """A worker died, raised, or did not answer in time; the pool has been shut down."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cleanup(procs, conns, segments, owner: Optional[int] = None) -> None:
    """Stop the workers and unlink the segments, in the process that made them only: a forked
    child that exits must not close its parent's pool (it cannot join the parent's children)."""
    if owner is not None and owner != os.getpid():
        return
    for conn in conns:
        try:
            conn.send(("close",))
        except (OSError, BrokenPipeError):
            pass
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join()
    for conn in conns:
        conn.close()
    for segment in segments:
        segment.release()
    procs.clear()
    conns.clear()
    segments.clear()


_LIVE_POOLS: weakref.WeakSet[KSplitMatMul] = weakref.WeakSet()


def _forget_workers_in_child() -> None:
    """After os.fork(), in the child: the parent's workers are not ours. multiprocessing's exit
    handler (util._exit_function, inherited with its registry of children) would otherwise
    SIGTERM every daemonic worker it lists when the child exits: it cannot wait for them (they
    are not the child's children), so it takes them for alive and terminates them, which killed
    the parent's pool ("worker 0 died with exit code -15")."""
    for pool in list(_LIVE_POOLS):
        for process in pool.processes:
            multiprocessing.process._children.discard(process)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_in_child)


def close_all_pools() -> None:
    """Stop every open pool's workers and unlink its segments (a forced exit's clean-up)."""
    for pool in list(_LIVE_POOLS):
        _cleanup(pool.processes, pool._conns, pool._segments, pool._owner)


class KSplitMatMul:
    """A pool of K-split workers; reuse it to keep processes (and loaded shards) warm.

    with KSplitMatMul(workers=2) as pool:
        pool.load(a, b)        # distribute shards into shared memory
        c = pool.compute()     # every worker: A_i B_i; partials combined into C
        c = pool(a, b)         # both at once
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        dtype: str = "float32",
        threads_per_worker: int = 1,
        transport: str = "shm",
        timeout: float = 120.0,
        pin_cores: bool = True,
    ):
        check_pool_options(workers, dtype, transport, threads_per_worker, timeout)
        # one call at a time: the workers answer one request each, so two threads interleaving
        # requests would read each other's replies
        self._lock = threading.RLock()
        self.workers, self.dtype, self.transport, self.timeout = (
            workers,
            np.dtype(DTYPES[dtype]),
            transport,
            timeout,
        )
        self.processes: list = []
        self._conns: list = []
        self._segments: list[Segment] = []
        self._a: Optional[np.ndarray] = None  # the shared inputs and C of the current layout
        self._b: Optional[np.ndarray] = None
        self._c: Optional[np.ndarray] = None
        self._layout: Optional[tuple] = None  # (n, k, m, K sizes) the segments are made for
        self._fresh_inputs = False  # A changed since the workers last copied their blocks
        # the shared A and B were handed out by inputs(): the caller may write them at any time,
        # so every compute() takes its block of A afresh
        self._inputs_out = False
        self._owner = (
            os.getpid()
        )  # the process whose pool this is; a forked child's copy is unusable
        self._finalizer = weakref.finalize(
            self, _cleanup, self.processes, self._conns, self._segments, self._owner
        )
        _LIVE_POOLS.add(self)
        dist_addr = f"tcp://127.0.0.1:{_free_port()}" if transport == "gloo" else None
        try:
            for rank in range(workers):
                options = (threads_per_worker, dtype, transport, dist_addr, pin_cores, timeout)
                self._start_worker(rank, options)
            # starting a process and importing ORT takes seconds on a busy machine: the call
            # timeout (how long one product may take to answer) does not bound it
            self._gather("ready", max(self.timeout, START_TIMEOUT_S))
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------------
    def _start_worker(self, rank: int, options: tuple) -> None:
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(
            target=serve,
            name=f"ksplit-{rank}",
            daemon=True,
            args=(child_end, rank, self.workers, *options, os.getpid()),
        )
        p.start()
        child_end.close()
        self.processes.append(p)
        self._conns.append(parent_end)

    def _gather(self, expected: str, timeout: Optional[float] = None) -> list:
        """One reply from every worker, or WorkerError (after shutting the pool down)."""
        replies: dict[int, tuple] = {}
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            while len(replies) < len(self._conns):
                pending = {c: i for i, c in enumerate(self._conns) if i not in replies}
                sentinels = {self.processes[i].sentinel: i for i in pending.values()}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError(
                        f"workers {sorted(pending.values())} did not answer within {timeout:g} s"
                    )
                for ready in wait(list(pending) + list(sentinels), timeout=left):
                    i = pending[ready] if ready in pending else sentinels[ready]
                    if i in replies:
                        continue
                    try:
                        reply = self._conns[i].recv() if self._conns[i].poll() else None
                    except (EOFError, OSError):  # a killed peer: EOF or connection reset
                        reply = None
                    if reply is None:
                        if self.processes[i].is_alive():
                            continue
                        raise self._died(i)
                    if reply[0] == "error":
                        raise WorkerError(f"worker {i} raised:\n{reply[1]}")
                    replies[i] = reply
        except BaseException:
            self.close()
            raise
        wrong = {i: r[0] for i, r in replies.items() if r[0] != expected}
        if wrong:  # a protocol slip, not user input: keep it loud
            self.close()
            raise WorkerError(
                f"workers answered {wrong} where {expected!r} was expected; the pool is closed"
            )
        return [replies[i] for i in range(len(self._conns))]

    def _send(self, i: int, msg: tuple) -> None:
        """Send to worker i; a worker that has died (broken pipe) becomes WorkerError too."""
        try:
            self._conns[i].send(msg)
        except OSError as exc:
            error = self._died(i)
            self.close()
            raise error from exc

    def _died(self, i: int) -> WorkerError:
        self.processes[i].join(1.0)
        return WorkerError(
            f"worker {i} (pid {self.processes[i].pid}) died with exit code {self.processes[i].exitcode}"
        )

    def _check_open(self) -> None:
        if os.getpid() != self._owner:
            raise WorkerError(
                f"this pool belongs to process {self._owner}; a forked child cannot use it (make its own)"
            )
        if not self.processes:
            raise WorkerError("the pool is closed")

    # -- API ------------------------------------------------------------------------------
    def inputs(
        self, n: int, k: int, m: int, splits: Optional[Sequence[int]] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shared A [n, k] and B [k, m] to fill in place: compute() then reads them with no copy
        by the caller. Their contents are undefined until written."""
        with self._lock:
            self._check_open()
            self._ensure_layout(n, k, m, split_sizes(k, self.workers, splits))
            self._fresh_inputs = self._inputs_out = True
            return self._a, self._b

    def _ensure_layout(self, n: int, k: int, m: int, sizes: list[int]) -> None:
        """Shared segments for this shape, reused if the last call had the same one."""
        if self._layout == (n, k, m, tuple(sizes)):
            return
        for segment in self._segments:
            segment.release()
        self._segments.clear()
        self._layout = None
        self._inputs_out = False
        partials = self.workers - 1 if self.transport == "shm" else 0
        check_shared_memory((n * k + k * m + (1 + partials) * n * m) * self.dtype.itemsize)

        def segment(shape):
            made = Segment(shape, self.dtype)
            self._segments.append(made)
            return made.spec, made.array

        (a_spec, self._a), (b_spec, self._b), (c_spec, self._c) = (
            segment((n, k)),
            segment((k, m)),
            segment((n, m)),
        )
        partial_specs = (
            [segment((n, m))[0] for _ in range(self.workers - 1)] if self.transport == "shm" else []
        )
        k_edges = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        row_edges = [n * i // self.workers for i in range(self.workers + 1)]
        for i in range(self.workers):
            self._send(
                i,
                (
                    "layout",
                    a_spec,
                    b_spec,
                    c_spec,
                    partial_specs,
                    (k_edges[i], k_edges[i + 1]),
                    (row_edges[i], row_edges[i + 1]),
                ),
            )
        self._gather("ok")
        self._layout = (n, k, m, tuple(sizes))

    def load(
        self, a: np.ndarray, b: np.ndarray, splits: Optional[Sequence[int]] = None
    ) -> list[int]:
        """Put A and B in shared memory (one copy each, none if they are the arrays from inputs());
        each worker takes its block at the next compute()."""
        with self._lock:
            return self._load(a, b, splits)

    def _load(
        self, a: np.ndarray, b: np.ndarray, splits: Optional[Sequence[int]] = None
    ) -> list[int]:
        self._check_open()
        a, b = as_operands(a, b)
        for name, x in (("A", a), ("B", b)):
            if not np.can_cast(x.dtype, self.dtype, casting="safe"):
                raise ValueError(
                    f"{name} is {x.dtype} but this pool computes in {self.dtype}: narrowing would "
                    f"lose precision or overflow silently; make the pool with dtype='{x.dtype}'"
                )
        (n, k), m = a.shape, b.shape[1]
        sizes = split_sizes(k, self.workers, splits)
        self._ensure_layout(n, k, m, sizes)
        for shared, given in ((self._a, a), (self._b, b)):
            if given is not shared:
                np.copyto(shared, given, casting="same_kind")
        self._fresh_inputs = True
        return sizes

    def compute(self, copy: bool = True) -> np.ndarray:
        """Every worker multiplies its blocks; the partials are combined into C. copy=False returns
        the shared C itself, overwritten by the next call."""
        with self._lock:
            return self._compute(copy)

    def _compute(self, copy: bool = True) -> np.ndarray:
        self._check_open()
        if self._layout is None:
            raise WorkerError("load() the matrices first")
        for i in range(self.workers):
            self._send(i, ("compute", self._fresh_inputs or self._inputs_out))
        self.last_worker_seconds = [r[1] for r in self._gather("done")]
        self._fresh_inputs = False
        if (
            self.transport == "shm" and self.workers > 1
        ):  # all partials are written: each worker sums its rows
            for i in range(self.workers):
                self._send(i, ("reduce",))
            self._gather("reduced")
        return self._c.copy() if copy else self._c

    def __call__(
        self,
        a: np.ndarray,
        b: np.ndarray,
        splits: Optional[Sequence[int]] = None,
        copy: bool = True,
    ) -> np.ndarray:
        with self._lock:
            self._load(a, b, splits)
            return self._compute(copy)

    def segment_names(self) -> list[str]:
        return [s.name for s in self._segments]

    def close(self) -> None:
        with self._lock:
            _cleanup(self.processes, self._conns, self._segments, self._owner)

    def __enter__(self) -> KSplitMatMul:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parallel_matmul(
    a: np.ndarray,
    b: np.ndarray,
    workers: int = 2,
    splits: Optional[Sequence[int]] = None,
    transport: str = "shm",
    threads_per_worker: int = 1,
) -> np.ndarray:
    """C = A B computed by `workers` processes, each on its slice of K."""
    a, b = as_operands(a, b)
    dtype = "float64" if np.result_type(a, b) == np.float64 else "float32"
    split_sizes(a.shape[1], workers, splits)  # reject bad worker counts before starting processes
    with KSplitMatMul(
        workers, dtype=dtype, transport=transport, threads_per_worker=threads_per_worker
    ) as pool:
        return pool(a.astype(dtype, copy=False), b.astype(dtype, copy=False), splits)
