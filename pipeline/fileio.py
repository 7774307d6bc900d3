"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Temporary files are named `.NAME.PID.XXXX.tmp` beside their target. Those of a live write are
tracked (so a forced exit can remove them), and those whose writer has died (kill -9, power
loss) are removed by the next write into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from .errors import PipelineError

_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
# temp files of the older naming (no pid): removed once they are this old, as no write lasts it
_LEGACY_TMP = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")
LEGACY_TMP_MAX_AGE_S = 3600.0
_LIVE_TMP: set[str] = set()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: Union[str, Path]) -> list[Path]:
    """Remove our temporary files and folders (a genai folder is staged as one) in `directory`
    whose writing process is gone."""
    removed = []
    directory = Path(directory)
    try:
        candidates = [
            p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")
        ]
    except OSError:
        return removed
    now = time.time()
    for p in candidates:
        if str(p) in _LIVE_TMP:
            continue
        m = _TMP_NAME.match(p.name)
        if m:
            stale = not _pid_alive(int(m["pid"])) or int(m["pid"]) == os.getpid()
        elif _LEGACY_TMP.match(p.name):
            try:
                stale = now - p.stat().st_mtime > LEGACY_TMP_MAX_AGE_S
            except OSError:
                stale = False
        else:
            continue
        if stale:
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed


def remove_live_temps() -> None:
    """Remove the temporary files of writes still in progress (a forced exit's last act)."""
    for name in list(_LIVE_TMP):
        with contextlib.suppress(OSError):
            os.unlink(name)
        _LIVE_TMP.discard(name)


def not_found(path: Union[str, Path], what: str) -> PipelineError:
    """`<what> not found: <path>`, saying why when the name exists but leads nowhere: a loop of
    symbolic links, or a link to a missing file (both look absent to Path.exists)."""
    path = Path(path)
    reason = ""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = " (a loop of symbolic links)"
        elif path.is_symlink():
            reason = f" (a symbolic link to {os.readlink(path)}, which does not exist)"
    return PipelineError(f"{what} not found: {path}{reason}")


def _cannot_write(path: Path, exc: OSError) -> PipelineError:
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EROFS):
        hint = f" (is {path.parent} a writable directory?)"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path.parent)
        hint = "" if free is None else f" ({free / 2**20:.1f} MiB free in {path.parent})"
    return PipelineError(f"cannot write {path}: {exc.strerror or exc}{hint}")


def regular_target(path: Union[str, Path], what: str = "cannot write") -> Path:
    """The file a write to `path` must replace: `path` itself, or a symlink's target (the link is
    written through, never replaced). Anything but a regular file or a new name (a device, a FIFO,
    a socket, a directory) is refused: renaming over it would destroy it."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return target  # a new name: whether its folder can take it is checked where it is written
    except OSError as exc:
        raise PipelineError(f"{what} {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise PipelineError(f"{what} {path}: it is a directory")
    if not stat.S_ISREG(mode):
        raise PipelineError(
            f"{what} {path}: it is not a regular file (a device, FIFO or socket); give a file path"
        )
    return target


@contextlib.contextmanager
def staging_dir(path: Union[str, Path]) -> Iterator[Path]:
    """A private folder beside `path` for making several files under their final names; removed
    at the end (and by remove_stale_temps if this process dies)."""
    path = Path(path)
    try:
        tmp = tempfile.mkdtemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    _LIVE_TMP.add(tmp)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _LIVE_TMP.discard(tmp)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = regular_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    _LIVE_TMP.add(tmp)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            raise _cannot_write(path, exc) from exc  # ENOSPC's own message names no path
        except Exception as exc:
            # a library writing for us (ORT's optimiser, protobuf) reports a full disk in its own
            # words, or as a parse error of what it could not write
            free = _free_bytes(path.parent)
            if free is not None and free < FULL_DISK_BYTES:
                raise PipelineError(
                    f"cannot write {path}: no space left on device ({free / 2**20:.1f} MiB free "
                    f"in {path.parent})"
                ) from exc
            raise
        os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _cannot_write(path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _LIVE_TMP.discard(tmp)


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
FULL_DISK_BYTES = 4 << 20


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def utf8_path(path: Union[str, Path], what: str) -> Path:
    """Refuse a path with bytes that are not UTF-8: onnx, ORT and the ONNX tools take paths as
    UTF-8 strings and fail on one deep inside with a binding error."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise PipelineError(
            f"{what}: {shown} has bytes that are not UTF-8; ONNX tools need a UTF-8 path"
        ) from None
    return Path(path)


def check_writable_dir(directory: Union[str, Path], what: str = "--out") -> Path:
    """Fail now, not after the work, if files cannot be written into `directory`."""
    directory = utf8_path(directory, what)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".probe.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = (
            "it is not a directory"
            if directory.exists() and not directory.is_dir()
            else (exc.strerror or str(exc))
        )
        raise PipelineError(f"{what}: cannot write into {directory}: {reason}") from exc
    return directory


def check_writable_file(path: Union[str, Path, None], what: str) -> None:
    """Fail now, not after the work, if `path` cannot be written (a directory, an unwritable folder)."""
    if path is None:
        return
    path = utf8_path(path, what)
    if path.is_dir():
        raise PipelineError(f"{what}: {path} is a directory; give a file path")
    path = regular_target(path, f"{what}:")
    if path.exists() and not os.access(path, os.W_OK):
        raise PipelineError(f"{what}: {path} is not writable")
    check_writable_dir(path.parent, what)


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


def _finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def json_text(data, indent: Optional[int] = 2) -> str:
    """Strict JSON (a number that is not finite becomes null, never NaN or Infinity), newline-ended."""
    return json.dumps(_finite_or_none(data), indent=indent, allow_nan=False) + "\n"
