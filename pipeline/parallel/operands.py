"""The K-split pool's arguments checked before any worker starts: operands, split sizes and
pool options, each refused with one clear message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from .worker import DTYPES

TRANSPORTS = ("shm", "gloo")


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


def check_pool_options(workers, dtype, transport, threads_per_worker, timeout) -> None:
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
