"""An artifact's path and identity: what determines its content (variant, flavour, config, the
weights' bytes, opset, versions), as its metadata records it, and why a file on disk is not it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..config import get_variant
from ..errors import PipelineError
from ..fileio import not_found
from ..reads import PathLike
from ..version import __version__
from ..weights import weights_sha256
from .flavours import FLAVOURS
from .manifest import DEFAULT_OUT, bytes_changed

DEFAULT_OPSET = 18


def onnx_path(variant: str, out_dir: PathLike = DEFAULT_OUT, flavour: str = "portable") -> Path:
    if flavour not in FLAVOURS:
        raise PipelineError(f"unknown flavour {flavour!r}; choose {', '.join(FLAVOURS)}")
    return Path(out_dir) / f"{variant}{FLAVOURS[flavour].suffix}"


def onnx_metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        raise not_found(path, "ONNX file")
    if not path.is_file():  # a FIFO would block the read forever
        raise PipelineError(f"{path} is not a regular file (a directory, FIFO, device or socket)")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PipelineError(
            f"{path} is not a readable ONNX file: {str(exc).splitlines()[0][:200]}"
        ) from exc
    return {p.key: p.value for p in model.metadata_props}


# bumped when what a flavour's graph computes, or its I/O contract, changes without the package
# version changing (an editable install keeps its version): older files are then exported again.
# 2: the fused decoders attend through GroupQueryAttention with per-row lengths (was
# MultiHeadAttention with left padding), which the in-place cache needs.
GRAPH_FORMAT = "2"


def artifact_key(
    variant: str, flavour: str, weights_sha256: str, opset: int = DEFAULT_OPSET
) -> dict[str, str]:
    """Everything that determines an artifact's content, as its metadata records it."""
    key = {
        "pipeline.variant": variant,
        "pipeline.flavour": flavour,
        "pipeline.config": json.dumps(get_variant(variant).config.to_dict(), sort_keys=True),
        "pipeline.weights_sha256": weights_sha256,
        "pipeline.opset": str(opset),
        "pipeline.version": __version__,
        "pipeline.graph_format": GRAPH_FORMAT,
    }
    bits = FLAVOURS[flavour].weight_bits
    if bits is not None:  # a new default recipe makes the quantized files stale
        from .weight_recipes import DEFAULT_RECIPE, RECIPES

        recipe = {"name": DEFAULT_RECIPE[bits], **RECIPES[DEFAULT_RECIPE[bits]].to_dict()}
        key["pipeline.weight_recipe"] = json.dumps(recipe, sort_keys=True)
    return key


def stale_reason(path: Path, key: dict[str, str]) -> Optional[str]:
    """Why the file at `path` is not the artifact `key` describes (None: it is)."""
    if not path.exists():
        return "missing"
    try:
        meta = onnx_metadata(path)
    except PipelineError:
        return "unreadable"
    for field, want in key.items():
        if meta.get(field) != want:
            name = field.removeprefix("pipeline.")
            if field not in meta:
                return f"it records no {name}"
            if len(want) > 24:  # a hash or a config: the values say less than the name
                return f"its {name} differs"
            return f"its {name} is {meta[field]!r}, not {want!r}"
    from .external import pair_fault

    return pair_fault(path)


def rebuild_reason(
    variant: str,
    flavour: str,
    weights: Path,
    out_dir: Path,
    opset: int = DEFAULT_OPSET,
    weights_sha: Optional[str] = None,
) -> Optional[str]:
    """Why the variant's file of this flavour must be exported again (None: it is up to date):
    judged against the weights read (weights_sha, from read_weights), or as they are now."""
    path = onnx_path(variant, out_dir, flavour)
    sha = weights_sha256(weights) if weights_sha is None else weights_sha
    reason = stale_reason(path, artifact_key(variant, flavour, sha, opset))
    if reason is None and bytes_changed(out_dir, path):
        return "its bytes differ from the sha256 the manifest recorded"
    return reason


def state_dict_sha256(state_dict: dict) -> str:
    """An identity for weights given as tensors: their names, dtypes, shapes and bytes."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "tensors-" + digest.hexdigest()
