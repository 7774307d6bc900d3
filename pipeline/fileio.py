"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        from .errors import PipelineError

        raise PipelineError(f"cannot write {path}: {exc.strerror or exc} (is {path.parent} a writable directory?)") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    write_bytes_atomic(path, text.encode())


def torch_save_atomic(obj, path: Union[str, Path]) -> None:
    import torch

    buf = io.BytesIO()  # the archive's inner name is then fixed, so equal content gives equal bytes
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Union[str, Path]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
