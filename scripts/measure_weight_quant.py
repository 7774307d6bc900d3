"""Choose the weight-only quantization settings by measurement: block size and accuracy level of
ORT's MatMulNBits, against the float32 ORT-optimised decoder, at one size, in one interleaved
run (decode step at past P, 1 thread) with file size and top-1 agreement over teacher-forced
positions. Writes docs/weight-quant-<size>.json.

    python scripts/measure_weight_quant.py DECODER.ort-opt.onnx --size gpt2-124m
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from pipeline.config import get_variant, sized_name
from pipeline.export.flavours import quantize_matmul_weights
from pipeline.fileio import json_text, write_text_atomic
from pipeline.measure.decode import _ort_step
from pipeline.measure.harness import Stats, machine, time_interleaved
from pipeline.runtime.decoders import OrtDecoder, teacher_forced_logits

SETTINGS = [  # (bits, block, accuracy_level, symmetric, algorithm): level None is fp32 compute
    (8, 32, 4, True, "rtn"),
    (4, 32, 4, True, "rtn"),
    (4, 32, None, True, "rtn"),
    (4, 128, 4, True, "rtn"),
    (4, 128, None, True, "rtn"),
    # what might keep the top token more often at 4 bits: smaller blocks, a zero point per
    # block, HQQ's fitted scales and zero points instead of rounding to nearest
    (4, 16, 4, True, "rtn"),
    (4, 32, 4, False, "rtn"),
    (4, 32, 4, False, "hqq"),
]


def label(bits, block, level, symmetric, algorithm) -> str:
    name = f"int{bits} block {block} level {level}"
    return name + ("" if symmetric else " zero points") + ("" if algorithm == "rtn" else " HQQ")


def quantize(src: Path, dest: Path, bits, block, level, symmetric, algorithm) -> float:
    start = time.perf_counter()
    model = quantize_matmul_weights(
        onnx.load(str(src)), bits, block, level, symmetric=symmetric, algorithm=algorithm
    )
    onnx.save_model(model, str(dest), save_as_external_data=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("decoder", type=Path)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    cfg = get_variant(sized_name("baseline", args.size)).config
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 96), dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": args.decoder}
        rows = {"fp32": {"bits": 32, "block": None, "accuracy_level": None}}
        for setting in SETTINGS:
            name = label(*setting)
            files[name] = Path(tmp) / f"{len(files)}.onnx"
            took = quantize(args.decoder, files[name], *setting)
            bits, block, level, symmetric, algorithm = setting
            rows[name] = {
                "bits": bits, "block": block, "accuracy_level": level, "symmetric": symmetric,
                "algorithm": algorithm, "quantize_s": took,
            }  # fmt: skip
            print(f"{name}: quantized in {took:.1f} s", file=sys.stderr)
        want = teacher_forced_logits(OrtDecoder(args.decoder, cfg, 1), ids, 32)[0]
        top2 = np.sort(want, -1)[:, -2:]
        logit_spread = {
            "std": float(want.std()),
            "top1_minus_top2_median": float(np.median(top2[:, 1] - top2[:, 0])),
        }
        for name, path in files.items():
            got = teacher_forced_logits(OrtDecoder(path, cfg, 1), ids, 32)[0]
            rows[name].update(
                mb=round(path.stat().st_size / 1e6, 1),
                top1_vs_fp32_pct=float((got.argmax(-1) == want.argmax(-1)).mean() * 100),
                max_rel_vs_fp32=float(np.abs(got - want).max() / np.abs(want).max()),
                # the error's size against the logits' own spread: top-1 flips follow from it
                rms_error_over_logit_std=float((got - want).std() / want.std()),
            )
        steps = {n: _ort_step(p, cfg, 1, args.past, 1) for n, p in files.items()}
        times = time_interleaved(steps, 3, args.repeat, 60.0, burst=4)
    for name, t in times.items():
        rows[name]["step_p50_ms"] = Stats.of(t).p50_ms
        rows[name]["x_fp32"] = Stats.of(times["fp32"]).p50_ms / rows[name]["step_p50_ms"]
        print(f"{name:28s} {rows[name]['mb']:8.1f} MB  step {rows[name]['step_p50_ms']:.3f} ms "
              f"({rows[name]['x_fp32']:.2f}x fp32)  top-1 {rows[name]['top1_vs_fp32_pct']:.1f}%")  # fmt: skip
    out = Path(__file__).resolve().parents[1] / "docs" / f"weight-quant-{args.size}.json"
    write_text_atomic(out, json_text({
        "what": "MatMulNBits settings, decode step at past P, 1 thread, one interleaved run",
        "command": " ".join(sys.argv), "past": args.past, "machine": machine((1,)),
        "fp32_logits": logit_spread, "rows": rows,
    }))  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
