"""Prefill (one forward of a long prompt) against its FLOP bound: what costs no kernel change.

Candidates, each checked against the as-exported ORT-optimised graph's logits before it is timed:
- `ort-opt`: the ORT-optimised file as exported (q, k and v are three outputs of one Split of the
  fused projection, fed to GroupQueryAttention);
- `ort-opt, packed QKV`: the same graph with the projection fed to GroupQueryAttention whole
  (its packed form: query [B, S, (N_h + 2 N_kv) h], key and value absent), the Split removed;
- `portable + transformers optimizer`: ORT's offline transformer optimizer (model_type gpt2) on
  the portable file, the route a user of onnxruntime.transformers would take;
- `decoder, cache in place` (with --decoder): the ORT-optimised decoder as generation runs the
  prompt, its cache one buffer bound as both past and present (SharedCacheDecoder.prefill), so
  GroupQueryAttention writes the keys where they stay instead of into a fresh present.
One interleaved run at each S, 1 intra-op thread; the bound is the causal FLOP count over ORT's
1024^3 GEMM rate measured in the same process. Writes docs/prefill.json.

    python scripts/measure_prefill.py exported/baseline.ort-opt.onnx exported/baseline.onnx \
        --decoder exported/baseline.decoder.ort-opt.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pipeline.config import get_variant
from pipeline.fileio import json_text, write_text_atomic
from pipeline.measure.harness import Stats, machine, time_interleaved
from pipeline.runtime.decoders import SharedCacheDecoder
from pipeline.runtime.session import make_session


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("optimized", type=Path)
    parser.add_argument("portable", type=Path)
    parser.add_argument("--decoder", type=Path, help="the ORT-optimised decoder file")
    parser.add_argument("--seq-lens", default="256,1024")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    cfg = get_variant("baseline").config
    info = machine((1,))
    gemm = info["gemm_gflops"]["onnxruntime"]["1"]
    rows, notes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"ort-opt": args.optimized}
        model, packed = packed_qkv(onnx.load(str(args.optimized)))
        files["ort-opt, packed QKV"] = Path(tmp) / "packed.onnx"
        onnx.save_model(model, str(files["ort-opt, packed QKV"]))
        notes["ort-opt, packed QKV"] = (
            f"{packed} GroupQueryAttention nodes fed the packed projection"
        )
        tuned = Path(tmp) / "transformers-optimizer.onnx"
        notes["portable + transformers optimizer"] = transformer_optimized(
            args.portable, tuned, cfg
        )
        if tuned.exists():
            files["portable + transformers optimizer"] = tuned
        sessions = {name: make_session(path, 1) for name, path in files.items()}
        decoder = SharedCacheDecoder(args.decoder, cfg, 1) if args.decoder else None
        for n in (int(x) for x in args.seq_lens.split(",")):
            ids = np.random.default_rng(n).integers(0, cfg.vocab_size, (1, n), dtype=np.int64)
            want = sessions["ort-opt"].run(None, {"input_ids": ids})[0]
            runs = {}
            for name, session in sessions.items():
                got = session.run(None, {"input_ids": ids})[0]
                diff = float(np.abs(got - want).max() / np.abs(want).max())
                if not np.isfinite(got).all() or diff > 1e-4:
                    notes[f"{name} at S={n}"] = (
                        f"differs from ort-opt (max rel {diff:.3g}): not timed"
                    )
                    continue
                runs[name] = lambda s=session, x=ids: s.run(None, {"input_ids": x})
            if decoder is not None:
                name = "decoder, cache in place"
                mask, positions = np.ones_like(ids), np.arange(n)[None, :]
                decoder.reserve(n)
                decoder.prefill(ids, mask, positions)
                got = decoder.logits[: n * cfg.vocab_size].reshape(want.shape)
                diff = float(np.abs(got - want).max() / np.abs(want).max())
                if np.isfinite(got).all() and diff <= 1e-4:
                    runs[name] = lambda x=ids, m=mask, p=positions: decoder.prefill(x, m, p)
                else:
                    notes[f"{name} at S={n}"] = f"differs from ort-opt (max rel {diff:.3g})"
            times = time_interleaved(runs, 2, args.repeat, 60.0)
            bound_ms = cfg.forward_flops(n) / gemm / 1e6
            for name, t in times.items():
                p50 = Stats.of(t).p50_ms
                rows[f"{name} @ {n}"] = {
                    "runtime": name, "seq_len": n, "p50_ms": p50,
                    "flop_bound_ms": bound_ms, "x_bound": p50 / bound_ms,
                    "x_as_exported": p50 / Stats.of(times["ort-opt"]).p50_ms,
                }  # fmt: skip
                print(f"S={n:5d} {name:36s} {p50:8.2f} ms  {p50 / bound_ms:5.2f}x bound "
                      f"({bound_ms:.2f} ms at {gemm:.0f} GFLOP/s)", file=sys.stderr)  # fmt: skip
    for name, text in notes.items():
        print(f"{name}: {text}", file=sys.stderr)
    out = Path(__file__).resolve().parents[1] / "docs" / "prefill.json"
    write_text_atomic(out, json_text({
        "what": "prefill forward vs the causal FLOP bound at ORT's GEMM rate, 1 thread, one "
                "interleaved run per S", "command": " ".join(sys.argv), "machine": info,
        "rows": rows, "notes": notes,
    }))  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
