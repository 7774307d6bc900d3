"""exported/manifest.json: what each artifact in a folder is, its sha256 and size, updated under a
file lock so that concurrent runs do not lose entries."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import PipelineError
from ..fileio import write_text_atomic
from ..reads import PathLike, file_sha256
from .external import data_path

DEFAULT_OUT = Path("exported")

MANIFEST = "manifest.json"


def bytes_changed(out_dir: PathLike, path: Path) -> bool:
    """Whether the file's sha256 (or its external data file's) differs from the one the manifest
    recorded for it (a file the manifest does not know is judged by its metadata alone). Hashed
    once per process while its size and mtime stay the same."""
    entry = read_manifest(out_dir)["artifacts"].get(path.name, {})
    if "sha256" in entry and entry["sha256"] != file_sha256(path):
        return True
    if "data_sha256" in entry:
        data = data_path(path)
        return not data.is_file() or entry["data_sha256"] != file_sha256(data)
    return False


def _manifest_shape_ok(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("artifacts"), dict)
        and all(isinstance(k, str) and isinstance(v, dict) for k, v in data["artifacts"].items())
    )


def read_manifest(out_dir: PathLike = DEFAULT_OUT) -> dict:
    """The manifest, or an empty one if it is missing or unreadable (bad JSON, wrong shape): it
    only records what the files themselves hold, so it is rebuilt rather than trusted."""
    path = Path(out_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"artifacts": {}}
    return data if _manifest_shape_ok(data) else {"artifacts": {}}


@contextlib.contextmanager
def _manifest_lock(out_dir: Path):
    """An exclusive lock for the read-modify-write of the manifest across processes."""
    import fcntl

    try:
        fd = os.open(out_dir / ".manifest.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineError(
            f"cannot record results in {out_dir / MANIFEST}: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def update_manifest(out_dir: PathLike, artifact: Path, fields: dict) -> None:
    """Record (or update) one artifact's entry; its sha256 and size are read from the file."""
    out_dir = Path(out_dir)
    sha = file_sha256(artifact)
    with _manifest_lock(out_dir):
        manifest = read_manifest(out_dir)
        entry = manifest["artifacts"].get(artifact.name, {})
        if "verification" in entry and entry.get("sha256") != sha:
            entry.pop("verification")  # a new file has not been verified yet
        entry.update(fields, sha256=sha, size_bytes=artifact.stat().st_size)
        entry.pop("data_sha256", None), entry.pop("data_size_bytes", None)
        if fields.get("external_data"):  # the pair is hashed as a pair
            data = data_path(artifact)
            entry.update(data_sha256=file_sha256(data), data_size_bytes=data.stat().st_size)
        manifest["artifacts"][artifact.name] = entry
        try:
            text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        except ValueError as exc:
            raise PipelineError(
                f"manifest entry for {artifact.name} holds a non-finite number: {fields}"
            ) from exc
        write_text_atomic(out_dir / MANIFEST, text)
