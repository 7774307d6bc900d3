"""Prefill: one forward of a prompt in each candidate graph that costs no kernel change, against
the causal FLOP bound at ORT's GEMM rate. Candidates, each checked against the as-exported fused
graph's logits before it is timed (one that differs is noted, never timed):
- the fast runtime's file as exported (q, k and v three outputs of one Split of the fused
  projection, fed to GroupQueryAttention);
- the same graph with the projection fed to GroupQueryAttention whole (its packed form: query
  [B, S, (N_h + 2 N_kv) h], key and value absent), the Split removed;
- ORT's offline transformer optimizer (model_type gpt2) on the portable file, the route a user of
  onnxruntime.transformers would take;
- the fused decoder as generation runs the prompt, its cache one buffer bound as both past and
  present (SharedCacheDecoder.prefill), so GroupQueryAttention writes the keys where they stay.
The candidates of one S take turns (time_interleaved)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from ..runtime.registry import get_runtime, runtime_with
from .harness import Stats, machine, time_interleaved

TOLERANCE = 1e-4  # max |diff| / max |logits| against the graph as exported


@dataclass(frozen=True)
class PrefillPlan:
    variant: str = "baseline"
    seq_lens: tuple[int, ...] = (256, 1024)
    threads: int = 1
    repeat: int = 15
    warmup: int = 2


def packed_qkv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """GroupQueryAttention fed the fused projection itself where q, k, v are one Split's outputs."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    packed, dropped = 0, []
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        split = producer.get(node.input[0])
        if split is None or split.op_type != "Split" or list(split.output) != list(node.input[:3]):
            continue
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        packed += 1
        if all(consumers[o] == 1 for o in split.output):
            dropped.append(split)
    for split in dropped:
        model.graph.node.remove(split)
    return model, packed


def transformer_optimized(portable: Path, dest: Path, cfg) -> str:
    """ORT's transformer optimizer on the portable file; what it fused, or why it failed."""
    from onnxruntime.transformers import optimizer

    try:
        optimized = optimizer.optimize_model(
            str(portable), model_type="gpt2", num_heads=cfg.n_heads, hidden_size=cfg.d_model
        )
        optimized.save_model_to_file(str(dest))
    except Exception as exc:  # the optimizer's own failure is the finding
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    ops: dict[str, int] = {}
    for node in onnx.load(str(dest)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12])


def _candidates(workspace, variant: str, cfg, tmp: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """{candidate: its file}, {candidate: what was done to it, or why it is absent}."""
    fast = runtime_with("fast")
    portable = get_runtime(runtime_with("portable")).forward_flavour
    exported = workspace.artifact(variant, get_runtime(fast).forward_flavour)
    files, notes = {fast: exported}, {}
    model, packed = packed_qkv(onnx.load(str(exported)))
    files[f"{fast}, packed QKV"] = tmp / "packed.onnx"
    onnx.save_model(model, str(files[f"{fast}, packed QKV"]))
    notes[f"{fast}, packed QKV"] = f"{packed} GroupQueryAttention nodes fed the packed projection"
    tuned = tmp / "transformers-optimizer.onnx"
    name = "portable + transformers optimizer"
    notes[name] = transformer_optimized(workspace.artifact(variant, portable), tuned, cfg)
    if tuned.exists():
        files[name] = tuned
    return files, notes


def _checked(name: str, got: np.ndarray, want: np.ndarray, notes: dict, n: int) -> bool:
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    if np.isfinite(got).all() and diff <= TOLERANCE:
        return True
    notes[f"{name} at S={n}"] = (
        f"differs from the graph as exported (max rel {diff:.3g}): not timed"
    )
    return False


def _runs_at(n: int, sessions: dict, decoder, cfg, notes: dict) -> dict[str, Callable]:
    """The candidates that compute the exported graph's logits at S = n, as callables."""
    ids = np.random.default_rng(n).integers(0, cfg.vocab_size, (1, n), dtype=np.int64)
    want = sessions[runtime_with("fast")].run(None, {"input_ids": ids})[0]
    runs = {}
    for name, session in sessions.items():
        if _checked(name, session.run(None, {"input_ids": ids})[0], want, notes, n):
            runs[name] = lambda s=session, x=ids: s.run(None, {"input_ids": x})
    mask, positions = np.ones_like(ids), np.arange(n)[None, :]
    decoder.reserve(n)
    decoder.prefill(ids, mask, positions)
    got = decoder.logits[: n * cfg.vocab_size].reshape(want.shape)
    if _checked("decoder, cache in place", got, want, notes, n):
        runs["decoder, cache in place"] = lambda: decoder.prefill(ids, mask, positions)
    return runs


def bench_prefill(
    workspace, plan: PrefillPlan, on_point: Optional[Callable[[int], None]] = None
) -> dict:
    """Rows per (candidate, S): p50, the FLOP bound and the ratios; notes; the machine."""
    from ..runtime.decoders import SharedCacheDecoder
    from ..runtime.session import make_session

    cfg = workspace.model_config(plan.variant)
    info = machine((plan.threads,))
    gemm = info["gemm_gflops"]["onnxruntime"][str(plan.threads)]
    fast = runtime_with("fast")
    decoder_file = workspace.artifact(plan.variant, get_runtime(fast).decoder_flavour)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files, notes = _candidates(workspace, plan.variant, cfg, Path(tmp))
        sessions = {name: make_session(path, plan.threads) for name, path in files.items()}
        decoder = SharedCacheDecoder(decoder_file, cfg, plan.threads)
        for n in plan.seq_lens:
            runs = _runs_at(n, sessions, decoder, cfg, notes)
            times = time_interleaved(runs, plan.warmup, plan.repeat, 60.0)
            bound_ms = cfg.forward_flops(n) / gemm / 1e6
            as_exported = Stats.of(times[fast]).p50_ms if fast in times else float("nan")
            for name, t in times.items():
                p50 = Stats.of(t).p50_ms
                rows[f"{name} @ {n}"] = {
                    "runtime": name, "seq_len": n, "threads": plan.threads, "p50_ms": p50,
                    "flop_bound_ms": bound_ms, "x_bound": p50 / bound_ms,
                    "x_as_exported": p50 / as_exported,
                }  # fmt: skip
            if on_point:
                on_point(n)
    return {"variant": plan.variant, "machine": info, "rows": rows, "notes": notes}


PREFILL_HEADERS = ["S", "candidate", "p50 ms", "FLOP bound ms", "x bound", "x as exported"]


def prefill_rows(data: dict) -> list[tuple]:
    return [
        (
            r["seq_len"],
            r["runtime"],
            r["p50_ms"],
            r["flop_bound_ms"],
            r["x_bound"],
            r["x_as_exported"],
        )
        for r in data["rows"].values()
    ]
