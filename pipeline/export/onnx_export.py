"""torch -> ONNX with the dynamo exporter: one self-contained file per variant.

The graph takes input_ids int64 [1, seq] and returns logits float32 [seq, V], seq dynamic in
1..S_max. The file is written under a temporary name and renamed, and exported/manifest.json
records what is there.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

import onnx
import torch

from ..api import load_model
from ..config import get_variant, size_of
from ..errors import PipelineError
from ..fileio import atomic_path, check_writable_dir, not_found, write_text_atomic
from ..version import __version__, tool_versions
from ..weights import PathLike, file_sha256, read_weights, weights_path, weights_sha256
from .flavours import FLAVOURS
from .io_spec import BATCH, SEQUENCE, decoder_io, full_forward_io
from .routes import attention_route

DEFAULT_OUT = Path("exported")
DEFAULT_OPSET = 18
# the highest opset whose export passes onnx's checker and runs in ONNX Runtime here (torch 2.13,
# onnx 1.23, ORT 1.32): at 26 the checker rejects the exporter's Gelu node
MAX_OPSET = 25
MANIFEST = "manifest.json"


def onnx_path(variant: str, out_dir: PathLike = DEFAULT_OUT, flavour: str = "portable") -> Path:
    if flavour not in FLAVOURS:
        raise PipelineError(f"unknown flavour {flavour!r}; choose {', '.join(FLAVOURS)}")
    return Path(out_dir) / f"{variant}{FLAVOURS[flavour].suffix}"


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs about optional torchvision ops and deprecations; none of it is ours."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class DecoderGraph(torch.nn.Module):
    """The model with the decoder's flat I/O (decoder_io): the cache travels as 2 * N_l tensors."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        logits, presents = self.model(
            input_ids, [tuple(p) for p in past], attention_mask, position_ids, use_cache=True
        )
        return logits, [list(p) for p in presents]


def _export(module, args, io, dynamic_shapes, opset: int, extra: dict) -> onnx.ModelProto:
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=[t.name for t in io.inputs],
            output_names=[t.name for t in io.outputs],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
            **extra,
        )
    return make_portable(program.model_proto, io)


def trace_to_onnx(
    model: torch.nn.Module, opset: int, fused_attention: bool = False, decoder: bool = False
) -> onnx.ModelProto:
    """The full forward (full_forward_io) or the decoder with past (decoder_io) as ONNX, every
    batch and sequence axis dynamic."""
    cfg = model.config
    extra = {}
    if fused_attention:
        from .fused import translation_table

        extra["custom_translation_table"] = translation_table()
    with attention_route(model, "fused" if fused_attention else "explicit"):
        if not decoder:
            # batch 2 in the example: torch.export specialises a size-1 dim to the constant 1
            dims = {
                BATCH: torch.export.Dim(BATCH, min=1, max=4096),
                SEQUENCE: torch.export.Dim(SEQUENCE, min=1, max=cfg.max_seq_len),
            }
            io = full_forward_io(cfg)
            shapes = {
                "input_ids": {
                    i: dims[a] for i, a in enumerate(io.inputs[0].axes) if isinstance(a, str)
                }
            }
            return _export(
                model, (torch.zeros(2, 24, dtype=torch.int64),), io, shapes, opset, extra
            )
        # past, total and sequence lengths are related (total = past + sequence), which named
        # Dims cannot say; AUTO lets the exporter infer it, and make_portable names the axes
        b, s, p = 2, 3, 5
        auto = torch.export.Dim.AUTO
        past = [
            [torch.zeros(b, cfg.kv_heads, p, cfg.head_dim) for _ in range(2)]
            for _ in range(cfg.n_layers)
        ]
        args = (
            torch.zeros(b, s, dtype=torch.int64),
            torch.ones(b, p + s, dtype=torch.int64),
            torch.arange(p, p + s).expand(b, s).contiguous(),
            past,
        )
        shapes = {
            "input_ids": {0: auto, 1: auto},
            "attention_mask": {0: auto, 1: auto},
            "position_ids": {0: auto, 1: auto},
            "past": [[{0: auto, 2: auto}, {0: auto, 2: auto}] for _ in range(cfg.n_layers)],
        }
        return _export(DecoderGraph(model), args, decoder_io(cfg), shapes, opset, extra)


def drop_unused_opsets(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove opset imports of domains no node uses (ORT's optimiser declares eight of them)."""
    used = {n.domain for n in proto.graph.node} | {
        n.domain for f in proto.functions for n in f.node
    }
    used |= {f.domain for f in proto.functions}
    keep = [o for o in proto.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    return proto


def make_portable(proto: onnx.ModelProto, io) -> onnx.ModelProto:
    """Small rewrites so that more ONNX tools read the file, none changing what it computes:
    - Reshape's allowzero=1 is dropped (some converters refuse it): our shapes never hold a 0,
      so allowzero cannot change the result;
    - opset imports that no node uses are removed;
    - the graph's inputs and outputs carry the axis names of the I/O spec."""
    for node in proto.graph.node:
        if node.op_type == "Reshape":
            keep = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(keep)
    drop_unused_opsets(proto)
    renamed: dict[str, str] = {}
    for values, specs in ((proto.graph.input, io.inputs), (proto.graph.output, io.outputs)):
        for value, spec in zip(values, specs):
            dims = value.type.tensor_type.shape.dim
            for dim, axis in zip(dims, spec.axes):
                if isinstance(axis, str):
                    if dim.HasField("dim_param"):
                        renamed[dim.dim_param] = axis
                    dim.dim_param = axis
            del value.metadata_props[:]
    # the exporter's own symbols (s26, "s62 + s70") in the intermediate shapes: renamed where they
    # are an I/O axis, else left unknown; a tool that unifies shapes (tract) rejects a mix
    for value in proto.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                if dim.dim_param in renamed:
                    dim.dim_param = renamed[dim.dim_param]
                else:
                    dim.Clear()
    return proto


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
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 18:
        raise PipelineError(
            f"opset {opset} is too old: LayerNormalization needs >= 17, the exporter >= 18"
        )
    if opset > MAX_OPSET:
        raise PipelineError(
            f"opset {opset} is beyond {MAX_OPSET}, the highest that exports, passes onnx's "
            "checker and runs in ONNX Runtime with these versions"
        )
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


def state_dict_sha256(state_dict: dict) -> str:
    """An identity for weights given as tensors: their names, dtypes, shapes and bytes."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "tensors-" + digest.hexdigest()


_LIVE_EXECUTORS: set = set()


def stop_workers(pool=None) -> None:
    """Terminate and reap the export worker processes (of one pool, or of every live one): after
    an interrupt they must not outlive the command and go on writing files."""
    for executor in [pool] if pool is not None else list(_LIVE_EXECUTORS):
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(1.0)


def _start_export_worker(parent: int) -> None:
    """A worker dies with the command: SIGKILL leaves the parent no chance to stop it, and an
    orphan went on writing files and the manifest, then blocked forever holding ~1 GB. The
    parent's pid comes from the parent: killed while this worker was still starting, its
    getppid() would already name the process that adopted it."""
    from ..lifeline import tie_to_parent

    tie_to_parent(parent, immediate=True)  # the executor's workers are started by this thread
    torch.set_num_threads(1)  # the other worker has the other core


_worker_weights: dict = {}


def _export_in_worker(task: tuple) -> Path:
    """One (variant, flavour) in a worker process of export_variants. The worker reads the weights
    once; the bytes it read must be those the caller read, or the artifacts of one export would
    come from two different files."""
    name, flavour, weights, out_dir, opset, expected_sha = task
    cfg = get_variant(name).config
    key = (str(weights), size_of(cfg))  # every variant of a size reads the same supplied format
    if key not in _worker_weights:
        _worker_weights[key] = read_weights(weights, cfg)
    state_dict, sha = _worker_weights[key]
    if sha != expected_sha:
        raise PipelineError(changed_while_exporting(weights))
    return export_onnx(
        name, weights, out_dir, opset, state_dict=state_dict, flavour=flavour, weights_sha256=sha
    )


def changed_while_exporting(weights) -> str:
    return (
        f"weights {weights} changed while exporting (its bytes differ from those read first); "
        "nothing made from the new bytes was kept: run the export again"
    )


def export_variants(
    variants: Iterable[str],
    weights: Optional[PathLike] = None,
    out_dir: PathLike = DEFAULT_OUT,
    opset: int = DEFAULT_OPSET,
    flavours: Iterable[str] = ("portable",),
    on_done: Optional[Callable[[str, Path], None]] = None,
    processes: int = 1,
    keep_current: bool = False,
) -> list[Path]:
    """Export every variant in every flavour; the paths come back variant by variant, flavours in
    the order given. processes > 1 traces side by side in worker processes (tracing is
    single-threaded Python: two processes on two cores take about half the time); the files are
    the same either way. on_done hears of each file as it is written. keep_current: a file that
    is up to date (rebuild_reason None) is kept, not exported again."""
    variants, flavours = list(variants), list(flavours)
    out_dir = Path(out_dir)
    check_writable_dir(out_dir)
    if not variants:
        return []
    cfg = get_variant(
        variants[0]
    ).config  # one size per call: the supplied format is the same for all
    weights = weights_path(weights, cfg)
    # read, checked and hashed once for all variants, before any tracing: every artifact records
    # the identity of these bytes
    state_dict, sha = read_weights(weights, cfg)
    wanted = [(name, flavour) for name in variants for flavour in flavours]
    done: dict[tuple[str, str], Path] = {}
    if keep_current:
        for name, flavour in wanted:
            if rebuild_reason(name, flavour, weights, out_dir, opset, sha) is None:
                done[(name, flavour)] = onnx_path(name, out_dir, flavour)
                if on_done:
                    on_done(name, done[(name, flavour)])
    tasks = [t for t in wanted if t not in done]
    if processes > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        slow_first = sorted(tasks, key=lambda t: -FLAVOURS[t[1]].export_s)
        pool = ProcessPoolExecutor(
            min(processes, len(tasks)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_export_worker,
            initargs=(os.getpid(),),
        )
        _LIVE_EXECUTORS.add(pool)
        try:
            futures = {
                pool.submit(_export_in_worker, (name, flavour, weights, out_dir, opset, sha)): (
                    name,
                    flavour,
                )
                for name, flavour in slow_first
            }
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if on_done:
                    on_done(futures[future][0], done[futures[future]])
        except Exception:
            # a failed export: the others still running end by themselves (terminating them
            # mid-write would leak the executor's semaphores), the pending ones never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:
            stop_workers(pool)  # ^C or SIGTERM: no worker goes on writing files
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            _LIVE_EXECUTORS.discard(pool)
            # an error's traceback keeps this frame, and with it the executor and its queues'
            # named semaphores, alive to the exit, where they were reported leaked
            pool = futures = None
        return [done[t] for t in wanted]
    for name, flavour in tasks:
        done[(name, flavour)] = export_onnx(
            name,
            weights,
            out_dir,
            opset,
            state_dict=state_dict,
            flavour=flavour,
            weights_sha256=sha,
        )
        if on_done:
            on_done(name, done[(name, flavour)])
    return [done[t] for t in wanted]


def onnx_metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        raise not_found(path, "ONNX file")
    if not path.is_file():  # a FIFO would block the read forever
        raise PipelineError(f"{path} is not a regular file (a directory, FIFO, device or socket)")
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
    return {
        "pipeline.variant": variant,
        "pipeline.flavour": flavour,
        "pipeline.config": json.dumps(get_variant(variant).config.to_dict(), sort_keys=True),
        "pipeline.weights_sha256": weights_sha256,
        "pipeline.opset": str(opset),
        "pipeline.version": __version__,
        "pipeline.graph_format": GRAPH_FORMAT,
    }


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
    return None


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


def bytes_changed(out_dir: PathLike, path: Path) -> bool:
    """Whether the file's sha256 differs from the one the manifest recorded for it (a file the
    manifest does not know is judged by its metadata alone). Hashed once per process while its
    size and mtime stay the same."""
    entry = read_manifest(out_dir)["artifacts"].get(path.name, {})
    return "sha256" in entry and entry["sha256"] != file_sha256(path)


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
        manifest["artifacts"][artifact.name] = entry
        try:
            text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        except ValueError as exc:
            raise PipelineError(
                f"manifest entry for {artifact.name} holds a non-finite number: {fields}"
            ) from exc
        write_text_atomic(out_dir / MANIFEST, text)
