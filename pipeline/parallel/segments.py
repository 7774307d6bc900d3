"""The K-split pool's shared memory: blocks the caller may hold arrays of, and the check that a
layout fits before anything is written to it."""

from __future__ import annotations

import mmap
import os
from multiprocessing import shared_memory

import numpy as np

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


def attach(spec):
    name, shape, dtype = spec
    shm = shared_memory.SharedMemory(name=name)
    return shm, np.ndarray(shape, dtype=dtype, buffer=shm.buf)


class Segment:
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
