"""Artifacts past protobuf's 2 GiB: one .onnx (the graph) plus one external-data file beside it
(every initializer of 1 KiB or more), written and renamed as a pair, hashed as a pair.

The .onnx names its data file by a relative location, `<file>.data`, so the pair moves together
and plain onnxruntime, onnx's checker (by path), OpenVINO and genai load it from the graph's path.
A data file that is missing or shorter than the graph's references is named in one line and never
loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import PipelineError

ONNX_FILE_LIMIT = 2**31  # protobuf's limit on one serialized message: the whole .onnx file
# the graph's own bytes (nodes, shapes, small constants) beside its weights: kept well inside
HEADROOM = 64 * 2**20
MIN_EXTERNAL_BYTES = 1024  # smaller tensors stay inside the .onnx


def data_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".data")


def needs_external_data(weight_bytes: int) -> bool:
    return weight_bytes + HEADROOM >= ONNX_FILE_LIMIT


def save(proto, path: Path, external: bool) -> None:
    """The model at path (and its data file beside it, named for path, when external)."""
    import onnx

    if not external:
        onnx.save_model(proto, str(path), save_as_external_data=False)
        return
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path(path).name,
        size_threshold=MIN_EXTERNAL_BYTES,
        convert_attribute=True,
    )


def references(path: Path) -> Optional[tuple[str, int]]:
    """(the data file's location, the bytes the graph reads from it), or None for a
    self-contained file."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations, end = set(), 0
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            locations.add(info.location)
            end = max(end, (info.offset or 0) + (info.length or 0))
    if not locations:
        return None
    if len(locations) > 1:
        raise PipelineError(f"{path} spreads its weights over {len(locations)} data files")
    return locations.pop(), end


def pair_fault(path: Path) -> Optional[str]:
    """Why the graph at path cannot be loaded with its data (None: self-contained, or the pair is
    whole): the data file missing, or shorter than what the graph reads from it."""
    try:
        found = references(path)
    except PipelineError as exc:
        return str(exc)
    except Exception:  # not a readable graph at all: the caller's own message says so
        return None
    if found is None:
        return None
    location, end = found
    data = Path(path).parent / location
    if location != data_path(path).name:
        return f"its external data is named {location!r}, not {data_path(path).name!r}"
    if not data.is_file():
        return f"its external data file {data.name} is missing"
    if data.stat().st_size < end:
        return (
            f"its external data file {data.name} holds {data.stat().st_size:,} bytes, "
            f"fewer than the {end:,} the graph reads (truncated)"
        )
    return None


def check_loadable(path: Path) -> None:
    """Refuse, in one line, a graph whose external data is missing or truncated."""
    fault = pair_fault(path)
    if fault:
        raise PipelineError(f"{path}: {fault}; export it again (pipeline export --force)")
