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
from ..fileio import check_writable_dir
from ..version import tool_versions
from ..weights import PathLike, read_weights, weights_path
from .external import ONNX_FILE_LIMIT, needs_external_data
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


def export_onnx(
    variant: str = "baseline",
    weights: Optional[PathLike] = None,
    out_dir: PathLike = DEFAULT_OUT,
    opset: int = DEFAULT_OPSET,
    state_dict: Optional[dict] = None,
    flavour: str = "portable",
    weights_sha256: Optional[str] = None,
    external_data: bool = False,
) -> Path:
    """Export one variant; return the .onnx path.

    portable: standard ONNX ops only, loads in any ONNX tool. optimized: fused causal attention
    (com.microsoft.GroupQueryAttention) and ORT's fusions applied offline; ONNX Runtime only.
    int8: the fused graph with dynamically quantised int8 matmuls; approximate by design.

    The file records the identity of the weights it was made from: of the bytes read here, or
    `weights_sha256` with a state dict the caller read (read_weights gives both); a state dict
    without it is hashed from its tensors, so it is never taken for the file on disk.

    A model past protobuf's 2 GiB (or any, with external_data) is written as a pair: the .onnx and
    its weights in `<file>.data` beside it (export/external.py)."""
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
    external = external_data or needs_external_data(weight_bytes(spec.config))
    _write(proto, kind, meta, path, external)
    update_manifest(
        out_dir,
        path,
        {
            "variant": variant,
            "flavour": flavour,
            "opset": opset,
            "weights_sha256": meta["pipeline.weights_sha256"],
            "external_data": external,
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


def _write(proto, kind, meta: dict, path: Path, external: bool) -> None:
    """The traced graph (rewritten for its flavour) with its metadata, written whole or not at
    all. A pair is made in a staging folder under its final names (the graph names its data file),
    then each file renamed into place, the data before the graph. The portable file passes onnx's
    full check first (by path, which reads external data too)."""
    import contextlib
    import os

    from ..fileio import atomic_path, staging_dir
    from .external import data_path, save

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        tmp_data = stack.enter_context(atomic_path(data_path(path))) if external else None
        staging = stack.enter_context(staging_dir(path))
        made = staging / path.name
        if not kind.rewrite:
            onnx.helper.set_model_props(proto, meta)
            save(proto, made, external)
            onnx.checker.check_model(str(made), full_check=True)
        else:
            traced = staging / "traced.onnx"
            save(proto, traced, external)
            kind.rewrite(traced, made, external)
            # the graph alone: its external data references are kept as they are
            rewritten = drop_unused_opsets(onnx.load(str(made), load_external_data=False))
            onnx.helper.set_model_props(rewritten, meta)  # the rewriters drop metadata
            onnx.save_model(rewritten, str(made), save_as_external_data=False)
        os.replace(made, tmp)
        if external:
            os.replace(data_path(made), tmp_data)
    if not external and data_path(path).is_file():
        os.remove(data_path(path))  # self-contained now: the old data file is no one's


def weight_bytes(cfg) -> int:
    return cfg.n_params() * 4


def check_export_size(variant: str, cfg, fused: bool) -> None:
    """Refuse, before any tracing, a trace that cannot fit in memory. The explicit-attention graphs
    store the causal square (S_max^2 booleans) beside the weights: n_positions 46500 with 0.37 M
    parameters once took 6.7 GB. Weights past 2 GiB go to an external-data file; the mask is one
    tensor, which must stay inside protobuf's limit itself."""
    from ..resources import check_memory

    mask_bytes = 0 if fused else cfg.max_seq_len**2
    if mask_bytes >= ONNX_FILE_LIMIT:
        raise PipelineError(
            f"{variant}: the portable graph's {cfg.max_seq_len}^2 causal mask is "
            f"{mask_bytes / 2**30:,.1f} GiB, past ONNX's 2 GiB limit for one tensor"
        )
    # the state dict and the traced graph's copy of the weights (the model holds the state dict's
    # own tensors), and the mask twice
    check_memory(2 * weight_bytes(cfg) + 2 * mask_bytes, f"exporting {variant}")


def ensure_export(
    variant: str,
    weights: Path,
    out_dir: Path,
    state_dict: dict,
    flavour: str = "portable",
    opset: int = DEFAULT_OPSET,
    weights_sha: Optional[str] = None,
    external_data: bool = False,
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
        external_data=external_data,
    )
