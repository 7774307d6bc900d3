"""Choose the weight-only quantization recipe by measurement (issue 30): every recipe of
pipeline/export/weight_recipes.py scored on trained checkpoints' held-out text (perplexity, KL and
top-1 against transformers' float64, the way `pipeline eval --recipe` does) and timed as a decode
step at gpt2-124m's size (its random stand-in weights: speed does not depend on the values) in
one interleaved run, 1 thread. Writes docs/int4-recipes.json and prints the recipe that meets
the goal: perplexity within 3% of float32 on every checkpoint and >= 3x float32's decode
tokens/s, the lowest KL among those; or, where none does, by how much each misses.

    python scripts/train_checkpoint.py && python scripts/train_checkpoint.py --family llama
    python scripts/measure_int4_recipes.py [--checkpoint DIR ...] [--repeat 20]
    python scripts/measure_int4_recipes.py --from docs/int4-recipes.json   # the plot again

Also draws docs/int4-recipes.png: each recipe's KL over its decode speed, per checkpoint.

GPTQ is calibrated on the first tokens of the training topics (never on the scored text); its
step time is that of the round-to-nearest recipe with its layout (the algorithm only chooses
the values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_checkpoint import corpus  # noqa: E402

from pipeline.check.quality import eval_runners, evaluate, text_ids  # noqa: E402
from pipeline.config import resolve_variants  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.export.external import save  # noqa: E402
from pipeline.export.flavours import quantize_matmul_weights  # noqa: E402
from pipeline.export.weight_recipes import RECIPES  # noqa: E402
from pipeline.fileio import json_text, write_text_atomic  # noqa: E402
from pipeline.measure.harness import Stats, machine, time_interleaved  # noqa: E402
from pipeline.report.plots import plot_recipes  # noqa: E402
from pipeline.runtime.decoders import OrtDecoder, teacher_forced_logits  # noqa: E402
from pipeline.runtime.recipe_runner import calibration_feeds, recipe_runner  # noqa: E402
from pipeline.runtime.step_timers import _ort_step  # noqa: E402
from pipeline.sources import checkpoint_size  # noqa: E402
from pipeline.workspace import Workspace  # noqa: E402

PPL_GOAL_PCT, SPEED_GOAL_X = 3.0, 3.0
CALIBRATION_CHARS = 20_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quality(folder: Path, out: Path) -> dict:
    """Every recipe's (and the fp32 / dynamic-int8 graphs') scores on the held-out text, in
    eval's default windows (the model's context, stride half of it)."""
    ws = Workspace(out, folder)
    variant = resolve_variants("baseline", checkpoint_size(folder))[0].name
    window = ws.model_config(variant).max_seq_len
    stride = window // 2
    ids = text_ids(ws, variant, text_file=folder / "held-out.txt")
    calibration_file = out / "calibration.txt"
    calibration_file.write_text(corpus()[0][:CALIBRATION_CHARS], encoding="utf-8")
    calibration_ids = text_ids(ws, variant, text_file=calibration_file)
    reference, note, runners = eval_runners(ws, variant, ["ort-opt", "ort-int8"], window, 1)
    feeds, failed = calibration_feeds(calibration_ids, window), {}
    for name in RECIPES:
        log(f"{folder.name}: quantizing by {name}")
        try:
            runners[f"recipe {name}"] = recipe_runner(ws, variant, name, 1, feeds).run
        except PipelineError as exc:
            failed[name] = str(exc)
            log(f"{folder.name}: {exc}")

    def on_window(i: int, n: int) -> None:
        if i % 20 == 0 or i == n:
            log(f"{folder.name}: window {i}/{n}")

    ref, scores = evaluate(ids, runners, reference, window, stride, on_window)
    return {
        "reference": {"note": note, **ref.to_dict()},
        "tokens_scored": ref.tokens,
        "window": window,
        "stride": stride,
        "rows": {s.runtime.removeprefix("recipe "): s.to_dict(ref) for s in scores},
        "failed": failed,
    }


def speed(out: Path, size: str, past: int, repeat: int) -> dict:
    """Decode step (batch 1, past P, 1 thread) of each recipe's decoder against float32's."""
    ws = Workspace(out)
    variant = resolve_variants("baseline", size)[0].name
    cfg = ws.model_config(variant)
    log(f"{size}: exporting the fused decoder")
    fp32 = ws.artifact(variant, "decoder-optimized")
    files, rows = {"fp32": fp32}, {"fp32": {}}
    layouts = {}
    for name, recipe in RECIPES.items():
        if recipe.calibrated:
            continue
        start = time.perf_counter()
        path = out / f"{name}.onnx"
        save(quantize_matmul_weights(onnx.load(str(fp32)), recipe), path, False)
        rows[name] = {"quantize_s": round(time.perf_counter() - start, 1)}
        files[name] = path
        layouts.setdefault(recipe.layout, name)
        log(f"{size}: {name} quantized in {rows[name]['quantize_s']} s")
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 96), dtype=np.int64)
    want = teacher_forced_logits(OrtDecoder(fp32, cfg, 1), ids, 32)[0]
    for name, path in files.items():
        got = teacher_forced_logits(OrtDecoder(path, cfg, 1), ids, 32)[0]
        rows[name].update(
            mb=round(path.stat().st_size / 1e6, 1),
            standin_top1_vs_fp32_pct=float((got.argmax(-1) == want.argmax(-1)).mean() * 100),
        )
    log(f"{size}: timing {len(files)} decoders, interleaved")
    steps = {n: _ort_step(p, cfg, 1, past, 1, in_place=True) for n, p in files.items()}
    times = time_interleaved(steps, 3, repeat, 120.0, burst=4)
    fp32_ms = Stats.of(times["fp32"]).p50_ms
    for name, t in times.items():
        stats = Stats.of(t)
        rows[name].update(step_p50_ms=stats.p50_ms, step_p90_ms=stats.p90_ms,
                          x_fp32=fp32_ms / stats.p50_ms, tokens_per_s=1000 / stats.p50_ms)  # fmt: skip
    for name, recipe in RECIPES.items():  # calibrated recipes: their layout's timing
        if recipe.calibrated and recipe.layout in layouts:
            rows[name] = {**rows[layouts[recipe.layout]], "timed_as": layouts[recipe.layout]}
    return {"size": size, "past": past, "rows": rows}


def choose(checkpoints: dict, timing: dict) -> dict:
    """The recipe meeting both goals with the lowest KL, or each recipe's misses."""
    verdicts = {}
    for name, recipe in RECIPES.items():
        if recipe.bits != 4 or recipe.calibrated:
            continue
        if any(name not in c["rows"] for c in checkpoints.values()):
            verdicts[name] = {"meets": False, "failed_on": [k for k, c in checkpoints.items()
                                                              if name not in c["rows"]]}  # fmt: skip
            continue
        worst_ppl = max(abs(c["rows"][name]["perplexity_change_pct"]) for c in checkpoints.values())
        worst_kl = max(c["rows"][name]["kl_mean"] for c in checkpoints.values())
        x = timing["rows"][name]["x_fp32"]
        verdicts[name] = {"worst_ppl_change_pct": worst_ppl, "worst_kl": worst_kl, "x_fp32": x,
                          "meets": worst_ppl <= PPL_GOAL_PCT and x >= SPEED_GOAL_X}  # fmt: skip
    passing = [n for n, v in verdicts.items() if v["meets"]]
    chosen = min(passing, key=lambda n: verdicts[n]["worst_kl"]) if passing else None
    return {"goal": {"ppl_within_pct": PPL_GOAL_PCT, "x_fp32_at_least": SPEED_GOAL_X},
            "chosen": chosen, "verdicts": verdicts}  # fmt: skip


def main() -> None:
    cache = Path(os.environ.get("PIPELINE_CACHE") or Path.home() / ".cache" / "pipeline")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=None)
    parser.add_argument("--size", default="gpt2-124m")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "int4-recipes.json",
    )
    parser.add_argument("--from", dest="from_json", type=Path, default=None,
                        help="re-draw the plot of a record instead of measuring")  # fmt: skip
    args = parser.parse_args()
    if args.from_json:
        plot_recipes(json.loads(args.from_json.read_text()), args.from_json.with_suffix(".png"))
        print(f"wrote {args.from_json.with_suffix('.png')}")
        return
    folders = args.checkpoint or [cache / "trained-gpt2-pydoc", cache / "trained-llama-pydoc"]
    for folder in folders:
        if not (folder / "held-out.txt").is_file():
            sys.exit(f"error: {folder} has no held-out.txt: run scripts/train_checkpoint.py first")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {}
        for folder in folders:
            work = Path(tmp) / folder.name
            work.mkdir()
            checkpoints[folder.name] = quality(folder, work)
        (Path(tmp) / "speed").mkdir()
        timing = speed(Path(tmp) / "speed", args.size, args.past, args.repeat)
    verdict = choose(checkpoints, timing)
    record = {
        "what": "weight recipes: quality on trained checkpoints' held-out text, decode step at "
                f"{args.size} (past {args.past}, 1 thread, one interleaved run)",
        "command": " ".join(sys.argv), "machine": machine((1,)),
        "recipes": {n: r.to_dict() for n, r in RECIPES.items()},
        "checkpoints": checkpoints, "speed": timing, "verdict": verdict,
    }  # fmt: skip
    write_text_atomic(args.out, json_text(record))
    plot_recipes(record, args.out.with_suffix(".png"))
    for name, v in verdict["verdicts"].items():
        if "failed_on" in v:
            print(f"{name:22s} failed on {', '.join(v['failed_on'])}")
            continue
        print(f"{name:22s} ppl {v['worst_ppl_change_pct']:+7.3f}%  KL {v['worst_kl']:.4f}  "
              f"{v['x_fp32']:.2f}x fp32  {'meets' if v['meets'] else '-'}")  # fmt: skip
    print(f"chosen: {verdict['chosen']}\nwrote {args.out}")


if __name__ == "__main__":
    main()
