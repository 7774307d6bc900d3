"""K-split (row-parallel) matrix multiplication across worker processes."""

from .kmatmul import KSplitMatMul, WorkerError, matmul_graph, parallel_matmul, split_sizes

__all__ = ["KSplitMatMul", "WorkerError", "matmul_graph", "parallel_matmul", "split_sizes"]
