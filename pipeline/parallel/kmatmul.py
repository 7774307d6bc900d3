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

import datetime
import mmap
import multiprocessing as mp
import multiprocessing.process
import os
import signal
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing import shared_memory
from multiprocessing.connection import wait
from typing import Optional

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}
TRANSPORTS = ("shm", "gloo")
START_TIMEOUT_S = 120.0  # a worker's start: spawn, import onnxruntime, make its session


class WorkerError(RuntimeError):
    """A worker died, raised, or did not answer in time; the pool has been shut down."""


def split_sizes(k: int, workers: int, splits: Optional[Sequence[int]] = None) -> list[int]:
    """Sizes K_i summing to K: as even as possible, or the caller's, checked."""
    if splits is not None:
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in splits):
            # int(2.9) would be 2: a split the caller did not ask for, computed without a word
            raise ValueError(
                f"splits must be integers (columns of K per worker), got {list(splits)}"
            )
        splits = [int(s) for s in splits]
        if len(splits) != workers:
            raise ValueError(f"splits has {len(splits)} entries for {workers} workers")
        if any(s < 1 for s in splits) or sum(splits) != k:
            raise ValueError(f"splits {splits} must be >= 1 each and sum to K={k}")
        return splits
    if not 1 <= workers <= k:
        raise ValueError(f"workers must be between 1 and K={k}, got {workers}")
    base, extra = divmod(k, workers)
    return [base + (i < extra) for i in range(workers)]


def as_operands(a, b) -> tuple[np.ndarray, np.ndarray]:
    """A and B as plain arrays. A masked array with masked entries is refused: np.asarray would
    keep the hidden values under the mask and multiply them as if they were data."""
    for name, x in (("A", a), ("B", b)):
        if isinstance(x, np.ma.MaskedArray) and np.ma.getmaskarray(x).any():
            raise ValueError(
                f"{name} is a masked array with {int(np.ma.getmaskarray(x).sum())} masked "
                f"entries; fill them first (x.filled(0)) or pass x.data to use the hidden values"
            )
    a, b = np.asarray(a), np.asarray(b)
    check_operands(a, b)
    return a, b


def check_operands(a: np.ndarray, b: np.ndarray) -> None:
    for name, x in (("A", a), ("B", b)):
        # the ONNX MatMul computes in float32 or float64: integers above 2**24 (2**53), complex
        # numbers and the like would come back wrong without an error, so they are refused
        if x.dtype.kind != "f" or x.dtype.itemsize > 8:
            raise ValueError(
                f"{name} has dtype {x.dtype}; the K-split computes float32 or float64 only "
                f"(cast it yourself if that is exact for your values)"
            )
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"A and B must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: A is {a.shape}, B is {b.shape}")
    if min(*a.shape, b.shape[1]) < 1:
        raise ValueError(
            f"every dimension must be >= 1, got N={a.shape[0]}, K={a.shape[1]}, M={b.shape[1]}"
        )


def matmul_graph(dtype=np.float32) -> bytes:
    """A one-node ONNX model C = MatMul(A, B) with dynamic N, K, M."""
    import onnx
    from onnx import TensorProto, helper

    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[np.dtype(dtype).type]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "kshard_matmul",
        [
            helper.make_tensor_value_info("A", elem, ["N", "K"]),
            helper.make_tensor_value_info("B", elem, ["K", "M"]),
        ],
        [helper.make_tensor_value_info("C", elem, ["N", "M"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="pipeline"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _session(dtype, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(matmul_graph(dtype), opts, providers=["CPUExecutionProvider"])


def _attach(spec):
    name, shape, dtype = spec
    shm = shared_memory.SharedMemory(name=name)
    return shm, np.ndarray(shape, dtype=dtype, buffer=shm.buf)


class _Segment:
    """A shared block the caller may hold arrays of. SharedMemory.close() unmaps the block even
    while numpy arrays point into it (reading one afterwards is a SIGSEGV, and a later mapping at
    the same address would be silently aliased), so the arrays are made from a second mapping of
    the same memory that nothing ever closes: it is unmapped when its last array is collected.
    release() only unlinks the name."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        self._shm = shared_memory.SharedMemory(create=True, size=nbytes)
        self.name = self._shm.name
        try:
            fd = os.open(os.path.join(SHM_DIR, self.name.lstrip("/")), os.O_RDWR)
        except OSError:  # no /dev/shm view of POSIX shared memory here
            fd = None
        if fd is None:
            buffer = self._shm.buf  # this platform: the SharedMemory stays open while we live
            self._keep_open = True
        else:
            try:
                buffer = mmap.mmap(fd, nbytes)
            finally:
                os.close(fd)
            self._keep_open = False
            self._shm.close()  # its own mapping: no array points into it
        count = int(np.prod(shape))
        self.array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
        self.spec = (self.name, tuple(shape), dtype.str)

    def release(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass
        self.array = None  # the mapping goes with the caller's last array, not before


def _pin(rank: int, world: int, threads: int) -> None:
    """One core each: left to the scheduler, two busy workers sometimes share a core (measured:
    the slower worker then takes ~20% longer, and the call waits for the slowest)."""
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if world * threads <= len(cores):
            os.sched_setaffinity(0, set(cores[rank * threads : (rank + 1) * threads]))


def _start(
    conn, rank: int, world: int, threads: int, dtype: str, transport: str, dist_addr, timeout
):
    """The worker's session (and process group), announced to the caller; None after an error."""
    try:
        session = _session(DTYPES[dtype], threads)
        if transport == "gloo":
            import torch
            import torch.distributed as dist

            torch.set_num_threads(1)
            # gloo's timeout bounds every collective: a stopped peer is an error, not a hang
            dist.init_process_group(
                "gloo",
                init_method=dist_addr,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout),
            )
        conn.send(("ready", os.getpid()))
        return session
    except Exception:
        conn.send(("error", traceback.format_exc(limit=4)))
        return None


def _worker(
    conn,
    rank: int,
    world: int,
    threads: int,
    dtype: str,
    transport: str,
    dist_addr,
    pin: bool,
    timeout: float,
    parent: int,
) -> None:
    """One worker: waits for 'load' (attach shards) and 'compute' (A_i B_i) until 'close'."""
    from ..lifeline import tie_to_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles ^C and shuts us down
    # the caller gone (even SIGKILLed) ends us, also while we wait inside ORT or an all_reduce;
    # not PR_SET_PDEATHSIG: a pool made by a short-lived thread would lose its workers with it
    tie_to_parent(parent)
    if pin:
        _pin(rank, world, threads)
    session = _start(conn, rank, world, threads, dtype, transport, dist_addr, timeout)
    if session is None:
        return
    shard = _Shard(session, rank, transport)
    handlers = {"layout": shard.layout, "compute": shard.compute, "reduce": shard.reduce}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "close":
            break
        try:
            conn.send(handlers[msg[0]](*msg[1:]))
        except Exception:
            conn.send(("error", traceback.format_exc(limit=4)))
    shard.close()


class _Shard:
    """A worker's view of the current layout: its block of A, the shared B, C and partials."""

    def __init__(self, session, rank: int, transport: str):
        self.session, self.rank, self.transport = session, rank, transport
        self.segments: list = []

    def layout(self, a_spec, b_spec, c_spec, partial_specs, k_range, rows) -> tuple:
        for shm in self.segments:
            shm.close()
        attached = [_attach(spec) for spec in (a_spec, b_spec, c_spec, *partial_specs)]
        self.segments = [shm for shm, _ in attached]
        self.a, b, self.c, *self.partials = (arr for _, arr in attached)
        self.k_range, self.rows = k_range, rows
        lo, hi = k_range
        self.a_block = np.empty((self.a.shape[0], hi - lo), dtype=self.a.dtype)  # A[:, K_i]
        binding = self.session.io_binding()
        binding.bind_cpu_input("A", self.a_block)
        binding.bind_cpu_input("B", b[lo:hi])  # rows of a C-order array: contiguous, in place
        if self.transport == "shm":  # ORT writes A_i B_i straight into C (rank 0) or a partial
            mine = self.c if self.rank == 0 else self.partials[self.rank - 1]
            binding.bind_output("C", "cpu", 0, mine.dtype, list(mine.shape), mine.ctypes.data)
        else:
            binding.bind_output("C", "cpu")
        self.binding = binding
        return ("ok",)

    def compute(self, fresh_inputs: bool) -> tuple:
        start = time.perf_counter()
        if fresh_inputs:  # new inputs: take this worker's column block of A
            np.copyto(self.a_block, self.a[:, self.k_range[0] : self.k_range[1]])
        self.session.run_with_iobinding(self.binding)
        if self.transport == "gloo":
            import torch
            import torch.distributed as dist

            tensor = torch.from_numpy(self.binding.copy_outputs_to_cpu()[0])
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            if self.rank == 0:
                self.c[...] = tensor.numpy()
        return ("done", time.perf_counter() - start)

    def reduce(self) -> tuple:
        # reduce-scatter: C already holds worker 0's product; add the others' in rank order
        lo, hi = self.rows
        for partial in self.partials:
            np.add(self.c[lo:hi], partial[lo:hi], out=self.c[lo:hi])
        return ("reduced",)

    def close(self) -> None:
        for shm in self.segments:
            shm.close()
        if self.transport == "gloo":
            import torch.distributed as dist

            dist.destroy_process_group()


SHM_DIR = "/dev/shm"


def check_shared_memory(needed: int, directory: str = SHM_DIR) -> None:
    """Refuse a layout that does not fit in shared memory: writing past its end is a SIGBUS that
    kills the process without a word (a container's /dev/shm is often 64 MB)."""
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # no such filesystem here: the platform's shared memory has no size to check
    if needed > free:
        raise ValueError(
            f"A, B, C and the partial products need {needed / 2**20:,.0f} MiB of shared memory but "
            f"{directory} has {free / 2**20:,.0f} MiB free; use fewer or smaller operands, or a larger {directory}"
        )


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


def _check_pool_options(workers, dtype, transport, threads_per_worker, timeout) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")


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
        _check_pool_options(workers, dtype, transport, threads_per_worker, timeout)
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
        self._segments: list[_Segment] = []
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
            target=_worker,
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
            made = _Segment(shape, self.dtype)
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
