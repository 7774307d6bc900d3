"""Reading weight files: every file's bytes read once, hashed while they are read.

An artifact's identity must be the bytes it was made from. Hashing a path before or after
reading it is not that: the file can be replaced in between (an `mv` of a new checkpoint while an
export traces), and the artifact then records the new file's hash over the old file's weights.
So readers take a file's bytes through `read_bytes`, and `recording()` collects the sha256 of
every file read inside it, in the order read.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from .errors import PipelineError
from .fileio import not_found

PathLike = Union[str, Path]

_recorded: contextvars.ContextVar[Optional[dict[Path, str]]] = contextvars.ContextVar(
    "pipeline_read_hashes", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[dict[Path, str]]:
    """{path: sha256 of the bytes read} for every read_bytes inside the block."""
    hashes: dict[Path, str] = {}
    token = _recorded.set(hashes)
    try:
        yield hashes
    finally:
        _recorded.reset(token)


def read_bytes(path: PathLike) -> bytes:
    """The file's bytes, hashed into the active recording (if any)."""
    data = Path(path).read_bytes()
    hashes = _recorded.get()
    if hashes is not None:
        hashes[Path(path)] = hashlib.sha256(data).hexdigest()
    return data


_sha256_cache: dict[tuple, str] = {}


def file_sha256(path: PathLike) -> str:
    """The file's sha256 as it is now, read once per process while its size and mtime stay the
    same (a 0.5 GB checkpoint is asked for by every artifact made from it)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _sha256_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha256_cache[key] = h.hexdigest()
    return _sha256_cache[key]


def combined_sha256(file_hashes: list[str], head: str = "") -> str:
    """One identity for several files: a checkpoint's config and weight files, in order."""
    digest = hashlib.sha256(head.encode())
    for sha in file_hashes:
        digest.update(sha.encode())
    return digest.hexdigest()


def _sniff(head: bytes) -> Optional[str]:
    """Why the bytes cannot be a torch.save file, judged by their start (None: they may be)."""
    if not head:
        return "it is empty"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28):
        return (
            "it is a safetensors file, not a torch.save file "
            "(convert it: torch.save(safetensors.torch.load_file(path), 'weights.pt'))"
        )
    if not head.startswith((b"PK", b"\x80")):  # torch.save's zip archive, or its legacy pickle
        return "it is not a torch.save file (neither its zip archive nor its legacy pickle)"
    return None


def torch_load_safely(path: PathLike, what: str) -> object:
    """torch.load with weights_only=True, every failure turned into one PipelineError line."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{what} {path} is a directory; give the .pt file inside it")
    if not path.exists():
        raise not_found(path, f"{what} file")
    if not path.is_file():  # a FIFO would block the read forever, a device never end
        raise PipelineError(f"{what} {path} is not a regular file (a FIFO, device or socket)")
    try:
        with open(path, "rb") as f:
            not_torch = _sniff(f.read(16))
        if not_torch:
            raise PipelineError(f"{what} {path} is not a readable torch file: {not_torch}")
        data = read_bytes(path)
    except OSError as exc:
        raise PipelineError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" not in first.lower():
            raise PipelineError(
                f"{what} {path} is not a readable torch file: {first[:200]}"
            ) from exc
        raise PipelineError(
            f"{what} {path} was refused: it holds objects other than tensors and plain "
            f"containers, which could run code ({first[:160]})"
        ) from exc
    except Exception as exc:  # torch raises many types for damaged files; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{what} {path} is not a readable torch file: {first[:200]}") from exc


def read_torch_state_dict(path: Path) -> object:
    """The spec's format: a torch.save state dict (unchecked; weights.py checks it)."""
    return torch_load_safely(path, "weights")


def load_safetensors_file(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_bytes(file))
    except OSError as exc:
        raise PipelineError(f"weights {file} cannot be read: {exc.strerror or exc}") from exc
    except (SafetensorError, ValueError) as exc:
        raise PipelineError(f"weights {file} is not a readable safetensors file: {exc}") from exc
