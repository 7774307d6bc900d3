"""A K-split worker process: its one-node MatMul session, its shard of the current layout, and
the loop that serves the pool's messages ('layout', 'compute', 'reduce', 'close')."""

from __future__ import annotations

import datetime
import os
import signal
import time
import traceback

import numpy as np

from .segments import attach

DTYPES = {"float32": np.float32, "float64": np.float64}


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


def matmul_session(dtype, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(matmul_graph(dtype), opts, providers=["CPUExecutionProvider"])


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
        session = matmul_session(DTYPES[dtype], threads)
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


def serve(
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
        attached = [attach(spec) for spec in (a_spec, b_spec, c_spec, *partial_specs)]
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
