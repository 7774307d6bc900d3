"""Beam search's cache reorder in ONNX Runtime: one tiny graph of Gathers along the batch axis,
run with IO binding from one set of cache buffers into another, so that a reorder is one ORT call
over the buffers the decoder already binds (no numpy copy of the cache)."""

from __future__ import annotations

from typing import Optional

import numpy as np


def gather_graph(count: int) -> bytes:
    """A model: rows [R] int64 and `count` float tensors [B, ...] -> each gathered along axis 0."""
    import onnx
    from onnx import TensorProto, helper

    rows = helper.make_tensor_value_info("rows", TensorProto.INT64, ["R"])
    inputs = [
        helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["B", "H", "L", "D"])
        for i in range(count)
    ]
    outputs = [
        helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["R", "H", "L", "D"])
        for i in range(count)
    ]
    nodes = [helper.make_node("Gather", [f"x{i}", "rows"], [f"y{i}"], axis=0) for i in range(count)]
    graph = helper.make_graph(nodes, "cache_gather", [rows, *inputs], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class CacheGather:
    """gather(rows, sources, targets, shape): targets[i][r] = sources[i][rows[r]] for every cache
    buffer i of `shape` [B, H, L, D] (float32 arrays, each at least that large)."""

    def __init__(self, count: int, threads: Optional[int] = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            gather_graph(count), opts, providers=["CPUExecutionProvider"]
        )
        self.count = count

    def gather(self, rows: np.ndarray, sources: list, targets: list, shape: list[int]) -> None:
        rows = np.ascontiguousarray(rows, np.int64)
        if len(rows) != shape[0] or rows.min() < 0 or rows.max() >= shape[0]:
            raise ValueError(f"beam rows {rows.tolist()} do not index a batch of {shape[0]}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("rows", rows)
        for i, (src, dst) in enumerate(zip(sources, targets)):
            binding.bind_input(f"x{i}", "cpu", 0, np.float32, shape, src.ctypes.data)
            binding.bind_output(f"y{i}", "cpu", 0, np.float32, shape, dst.ctypes.data)
        self.session.run_with_iobinding(binding)
