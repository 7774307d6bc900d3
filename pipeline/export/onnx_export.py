"""Writing one artifact: a variant's graph of one flavour, traced from the weights it was given,
written under a temporary name and renamed, recorded in the manifest with the identity of the
weights' bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import onnx

from ..api import load_model
from ..config import get_variant
from ..errors import PipelineError
from ..fileio import atomic_path, check_writable_dir
from ..version import tool_versions
from ..weights import PathLike, read_weights, weights_path
from .flavours import FLAVOURS
from .identity import (  # noqa: F401 (re-exported: the artifact's identity lives there)
    DEFAULT_OPSET,
    GRAPH_FORMAT,
    artifact_key,
    onnx_metadata,
    onnx_path,
    rebuild_reason,
    stale_reason,
    state_dict_sha256,
)
from .manifest import (  # noqa: F401 (re-exported)
    DEFAULT_OUT,
    MANIFEST,
    bytes_changed,
    read_manifest,
    update_manifest,
)
from .trace import drop_unused_opsets, make_portable, trace_to_onnx  # noqa: F401 (re-exported)

# the highest opset whose export passes onnx's checker and runs in ONNX Runtime here (torch 2.13,
# onnx 1.23, ORT 1.32): at 26 the checker rejects the exporter's Gelu node
MAX_OPSET = 25


ONNX_FILE_LIMIT = 2**31  # protobuf's limit on one serialized message: the whole .onnx file


def export_onnx(
    variant: str = "baseline",
    weights: Optional[PathLike] = None,
    out_dir: PathLike = DEFAULT_OUT,
    opset: int = DEFAULT_OPSET,
    state_dict: Optional[dict] = None,
    flavour: str = "portable",
    weights_sha256: Optional[str] = None,
) -> Path:
    """Export one variant; return the .onnx path.

    portable: standard ONNX ops only, loads in any ONNX tool. optimized: fused causal attention
    (com.microsoft.GroupQueryAttention) and ORT's fusions applied offline; ONNX Runtime only.
    int8: the fused graph with dynamically quantised int8 matmuls; approximate by design.

    The file records the identity of the weights it was made from: of the bytes read here, or
    `weights_sha256` with a state dict the caller read (read_weights gives both); a state dict
    without it is hashed from its tensors, so it is never taken for the file on disk."""
    path = onnx_path(variant, out_dir, flavour)
    check_opset(opset)
    spec = get_variant(variant)
    kind = FLAVOURS[flavour]
    check_writable_dir(out_dir)  # before the trace, not after it
    check_export_size(variant, spec.config, kind.fused)
    weights_file = weights_path(weights, spec.config)
    if state_dict is None:
        state_dict, weights_sha256 = read_weights(weights_file, spec.config)
    elif weights_sha256 is None:
        weights_sha256 = state_dict_sha256(state_dict)
    model = load_model(variant, state_dict=state_dict)
    proto = trace_to_onnx(model, opset, fused_attention=kind.fused, decoder=kind.decoder)
    meta = {
        **artifact_key(variant, flavour, weights_sha256, opset),
        "pipeline.variant_description": spec.description,
        "pipeline.tool_versions": json.dumps(tool_versions(), sort_keys=True),
        "pipeline.runtime": FLAVOURS[flavour].runtime,
    }
    proto.doc_string = f"pipeline {variant} ({flavour}): {spec.description}"
    _write(proto, kind, meta, path)
    update_manifest(
        out_dir,
        path,
        {
            "variant": variant,
            "flavour": flavour,
            "opset": opset,
            "weights_sha256": meta["pipeline.weights_sha256"],
        },
    )
    return path


def check_opset(opset) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 18:
        raise PipelineError(
            f"opset {opset} is too old: LayerNormalization needs >= 17, the exporter >= 18"
        )
    if opset > MAX_OPSET:
        raise PipelineError(
            f"opset {opset} is beyond {MAX_OPSET}, the highest that exports, passes onnx's "
            "checker and runs in ONNX Runtime with these versions"
        )


def _write(proto, kind, meta: dict, path: Path) -> None:
    """The traced graph (rewritten for its flavour) with its metadata, written whole or not at
    all; the portable file passes onnx's full check first."""
    with atomic_path(path) as tmp:
        if not kind.rewrite:
            onnx.helper.set_model_props(proto, meta)
            onnx.save_model(proto, str(tmp), save_as_external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
        else:
            kind.rewrite(proto, tmp)
            rewritten = drop_unused_opsets(onnx.load(str(tmp)))
            onnx.helper.set_model_props(rewritten, meta)  # the rewriters drop metadata
            onnx.save_model(rewritten, str(tmp), save_as_external_data=False)


def check_export_size(variant: str, cfg, fused: bool) -> None:
    """Refuse, before any tracing, a file that cannot be written as one protobuf message or a
    trace that cannot fit in memory. The explicit-attention graphs store the causal square
    (S_max^2 booleans) beside the weights: n_positions 46500 with 0.37 M parameters once passed a
    weights-only check, took 6.7 GB and ended in protobuf's traceback."""
    from ..resources import check_memory

    weight_bytes = cfg.n_params() * 4
    mask_bytes = 0 if fused else cfg.max_seq_len**2
    if weight_bytes + mask_bytes >= ONNX_FILE_LIMIT:
        mask = f" and a {cfg.max_seq_len}^2 causal mask" if mask_bytes else ""
        raise PipelineError(
            f"{variant}: {cfg.n_params() / 1e6:,.1f}M parameters in float32{mask} are "
            f"{(weight_bytes + mask_bytes) / 2**30:,.1f} GiB, above ONNX's 2 GiB limit for one "
            "file (a protobuf message); files with external data are not written yet"
        )
    # the state dict, the model and the traced graph's copy of the weights, and the mask twice
    check_memory(3 * weight_bytes + 2 * mask_bytes, f"exporting {variant}")


def ensure_export(
    variant: str,
    weights: Path,
    out_dir: Path,
    state_dict: dict,
    flavour: str = "portable",
    opset: int = DEFAULT_OPSET,
    weights_sha: Optional[str] = None,
) -> Path:
    """The variant's file of this flavour, re-exported unless its recorded variant, flavour, config,
    weights, opset and package version all match, and its bytes are those the manifest recorded
    when it was written: a file is never trusted by its name, nor by intact metadata. weights_sha
    is the identity of the bytes state_dict was read from (read_weights)."""
    if weights_sha is None:
        weights_sha = state_dict_sha256(state_dict)
    if rebuild_reason(variant, flavour, weights, out_dir, opset, weights_sha) is None:
        return onnx_path(variant, out_dir, flavour)
    return export_onnx(
        variant,
        weights,
        out_dir,
        opset,
        state_dict=state_dict,
        flavour=flavour,
        weights_sha256=weights_sha,
    )
