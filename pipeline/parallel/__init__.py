"""K-split (row-parallel) matrix multiplication across worker processes."""

from .kmatmul import KSplitMatMul, WorkerError, parallel_matmul
from .operands import split_sizes
from .worker import matmul_graph

__all__ = ["KSplitMatMul", "WorkerError", "matmul_graph", "parallel_matmul", "split_sizes"]
