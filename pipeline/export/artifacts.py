"""Everything `pipeline export` and `pipeline all` write, in one call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional


def export_artifacts(
    workspace,
    variants: Sequence[str],
    flavours: Sequence[str],
    opset: Optional[int] = None,
    genai: bool = False,
    on_done: Optional[Callable[[str], None]] = None,
    keep_current: bool = False,
    external_data: bool = False,
) -> list[Path]:
    """Every variant in every flavour (two worker processes where two cores are free, each
    holding a model), then the onnxruntime-genai folders if asked; on_done hears each file's name.
    keep_current: files that are up to date are kept (see export_plan)."""
    from ..config import get_variant
    from .identity import DEFAULT_OPSET
    from .pool import default_processes, export_variants

    weights = workspace.weights_file(get_variant(variants[0]).config) if variants else None
    paths = export_variants(
        variants,
        weights,
        workspace.out_dir,
        opset or DEFAULT_OPSET,
        flavours,
        on_done=(lambda name, path: on_done(path.name)) if on_done else None,
        processes=default_processes(),
        keep_current=keep_current,
        external_data=external_data,
    )
    if genai:
        paths += [workspace.genai_folder(v) for v in variants]
    return paths


def size_on_disk(path: Path) -> int:
    """A file's size with its external data file, or a folder's files' total."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir())
    from .external import data_path

    data = data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def export_plan(
    workspace, variants: Sequence[str], flavours: Sequence[str], opset: Optional[int] = None
) -> dict[Path, Optional[str]]:
    """Each file export_artifacts would write, with why it must be written (None: up to date)."""
    from ..config import get_variant
    from .identity import DEFAULT_OPSET, onnx_path, rebuild_reason

    if not variants:
        return {}
    weights = workspace.weights_file(get_variant(variants[0]).config)
    return {
        onnx_path(v, workspace.out_dir, f): rebuild_reason(
            v, f, weights, workspace.out_dir, opset or DEFAULT_OPSET
        )
        for v in variants
        for f in flavours
    }
