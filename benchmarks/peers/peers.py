"""Peers side by side with ours, in one process and one interleaved run per point.

Peers: Optimum's ONNX export with past in ORTModelForCausalLM, as exported and after Optimum's
ORTOptimizer (ONNX Runtime's transformer optimizer: what `optimum-cli ... --optimize O2` does),
CTranslate2's Generator (float32), and Hugging Face eager GPT-2 with past_key_values. Ours:
torch, ort and ort-opt for the full forward, the ort and ort-opt decoders for a step.

The spec's baseline weights (the stand-in, at --size) are written as a Hugging Face GPT-2
checkpoint (pipeline.hf_gpt2.save_checkpoint) which every engine, ours included, loads. Logits
must agree with transformers' float64 model before anything is timed (greedy tokens for
CTranslate2's decode). Run through run.sh, which makes this harness's own venv.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pipeline.config import get_variant, sized_name
from pipeline.fileio import json_text, write_text_atomic
from pipeline.hf_gpt2 import save_checkpoint
from pipeline.measure.decode import step_runner
from pipeline.measure.harness import Stats, gemm_sentence, machine, time_interleaved
from pipeline.runtime.registry import build
from pipeline.workspace import Workspace

TOLERANCE = 1e-4
HERE = Path(__file__).resolve().parent


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def close_enough(got: np.ndarray, want: np.ndarray) -> tuple[bool, float]:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return False, float("inf")
    diff = float(np.abs(got - want).max())
    return diff <= TOLERANCE * max(1.0, float(np.abs(want).max())), diff


def make_checkpoint(size: str, work: Path) -> Path:
    """The stand-in's baseline weights as a GPT-2 directory, with a vocabulary file CTranslate2's
    converter can read (the stand-in has no tokenizer: token i is spelled <i>, the last one is
    GPT-2's <|endoftext|>, which the converter adds when it is missing)."""
    from pipeline.weights import load_state_dict

    cfg = get_variant(sized_name("baseline", size)).config
    folder = save_checkpoint(load_state_dict(None, cfg), cfg, work / f"hf-{size}")
    vocab = {spelled(i, cfg.vocab_size): i for i in range(cfg.vocab_size)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def spelled(token: int, vocab_size: int) -> str:
    return "<|endoftext|>" if token == vocab_size - 1 else f"<{int(token)}>"


# --- the engines: each returns {"forward": fn(ids)->logits, "step": fn(P)->callable} ----------


def hf_reference(folder: Path):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float64).eval()
    return lambda ids: model(torch.from_numpy(ids)).logits.detach().numpy()


def hf_eager(folder: Path, threads: int):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()

    def forward(ids):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(ids)).logits.numpy()

    def step(past_len: int):
        torch.set_num_threads(threads)
        ids = torch.randint(0, model.config.vocab_size, (1, max(past_len, 1)))
        with torch.inference_mode():
            past = model(ids, use_cache=True).past_key_values
        token = torch.zeros((1, 1), dtype=torch.int64)

        def run():
            with torch.inference_mode():
                model(token, past_key_values=past, use_cache=True)
            past.crop(max(past_len, 1))  # back to P: every call is the step after P tokens

        return run

    return forward, step


def optimum_models(folder: Path, work: Path) -> dict[str, Path]:
    """Optimum's export with past (once) and its O2 optimisation of it."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    plain, optimized = work / "optimum", work / "optimum-O2"
    if not (plain / "model.onnx").exists():
        ORTModelForCausalLM.from_pretrained(folder, export=True, use_cache=True).save_pretrained(
            plain
        )
    if not optimized.exists():
        model = ORTModelForCausalLM.from_pretrained(plain, use_cache=True)
        ORTOptimizer.from_pretrained(model).optimize(
            save_dir=optimized,
            optimization_config=OptimizationConfig(optimization_level=2, optimize_for_gpu=False),
        )
    return {"optimum": plain, "optimum-O2": optimized}


def optimum_engine(path: Path, threads: int):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(path, use_cache=True, session_options=options)

    def forward(ids):
        t = torch.from_numpy(ids)
        return model(input_ids=t, attention_mask=torch.ones_like(t)).logits.numpy()

    def step(past_len: int):
        p = max(past_len, 1)
        ids = torch.randint(0, model.config.vocab_size, (1, p))
        past = model(input_ids=ids, attention_mask=torch.ones_like(ids)).past_key_values
        token, mask = (
            torch.zeros((1, 1), dtype=torch.int64),
            torch.ones((1, p + 1), dtype=torch.int64),
        )
        return lambda: model(input_ids=token, attention_mask=mask, past_key_values=past)

    return forward, step


def ctranslate2_dir(folder: Path, work: Path) -> Path:
    import ctranslate2

    out = work / "ct2"
    if not (out / "model.bin").exists():
        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(out), force=True)
    return out


def ctranslate2_engine(path: Path, threads: int, vocab_size: int):
    import ctranslate2

    gen = ctranslate2.Generator(
        str(path), device="cpu", compute_type="float32", intra_threads=threads, inter_threads=1
    )
    spell = lambda ids: [spelled(t, vocab_size) for t in ids]

    def forward(ids):
        out = gen.forward_batch([spell(row) for row in ids])
        return np.asarray(out)

    def generate(prompt, new_tokens: int) -> list[int]:
        result = gen.generate_batch(
            [spell(prompt)],
            max_length=new_tokens,
            min_length=new_tokens,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=[],
        )
        return result[0].sequences_ids[0]

    def step(past_len: int, new_tokens: int = 17):
        """Two generations after the same P-token prompt, of 1 and of `new_tokens` tokens:
        CTranslate2 keeps its cache inside generate_batch, so a step cannot be called alone;
        the difference of the two, over new_tokens - 1, is the steps without the prefill."""
        prompt = np.random.default_rng(0).integers(0, vocab_size, max(past_len, 1))
        return partial(generate, prompt, new_tokens), partial(generate, prompt, 1), new_tokens - 1

    return forward, step, generate


# --- the run -------------------------------------------------------------------------------


def check_forward(engines: dict, reference, cfg, checks: list) -> dict:
    """Engines whose logits match transformers' float64 model at S = 17 and 64, batch 1."""
    rng = np.random.default_rng(5)
    kept = {}
    for name, forward in engines.items():
        ok, worst = True, 0.0
        for n in (17, min(64, cfg.max_seq_len)):
            ids = rng.integers(0, cfg.vocab_size, (1, n), dtype=np.int64)
            good, diff = close_enough(forward(ids), reference(ids))
            ok, worst = ok and good, max(worst, diff)
        checks.append({"runtime": name, "graph": "forward", "max_abs_diff": worst, "passed": ok})
        log(
            f"check {name}: max |diff| {worst:.2e} vs transformers float64 -> {'pass' if ok else 'FAIL'}"
        )
        if ok:
            kept[name] = forward
    return kept


def measure_forward(engines: dict, seq_lens, threads: int, cfg, repeat: int) -> list[dict]:
    rows = []
    for n in seq_lens:
        ids = np.random.default_rng(n).integers(0, cfg.vocab_size, (1, n), dtype=np.int64)
        times = time_interleaved({k: partial(f, ids) for k, f in engines.items()}, 2, repeat, 20.0)
        for name, t in times.items():
            rows.append(
                {"runtime": name, "threads": threads, "seq_len": n, **Stats.of(t).to_dict()}
            )
        best = min(times, key=lambda k: Stats.of(times[k]).p50_ms)
        log(f"forward S={n} threads={threads}: fastest {best} " + ", ".join(
            f"{k} {Stats.of(v).p50_ms:.2f}" for k, v in times.items()))  # fmt: skip
    return rows


def measure_decode(steps: dict, past_lens, threads: int, repeat: int) -> list[dict]:
    """steps: name -> factory P -> (one step) or (long call, short call, steps between them):
    the latter's step is (median long - median short) / steps, both timed in the same rounds."""
    rows = []
    for p in past_lens:
        calls, pairs = {}, {}
        for name, factory in steps.items():
            made = factory(p)
            if isinstance(made, tuple):
                calls[name], calls[name + " (prefill)"] = made[0], made[1]
                pairs[name] = made[2]
            else:
                calls[name] = made
        times = time_interleaved(calls, 3, repeat, 30.0, burst=4)
        for name in steps:
            stats = Stats.of(times[name]).to_dict()
            timed = "one step"
            if name in pairs:
                short = Stats.of(times[name + " (prefill)"]).p50_ms
                stats = {"p50_ms": (stats["p50_ms"] - short) / pairs[name], "runs": stats["runs"]}
                timed = f"(generate {pairs[name] + 1} tokens - generate 1) / {pairs[name]}, medians"
            rows.append(
                {"runtime": name, "threads": threads, "past_len": p, "timed": timed, **stats}
            )
        log(f"decode P={p} threads={threads}: " + ", ".join(
            f"{r['runtime']} {r['p50_ms']:.3f}" for r in rows if r["past_len"] == p
            and r["threads"] == threads))  # fmt: skip
    return rows


def greedy_agreement(ours_decoder, ct2_generate, cfg, checks: list) -> bool:
    from pipeline.generation import Sampling, run_decoder

    prompt = np.random.default_rng(9).integers(0, cfg.vocab_size, 12).tolist()
    new, _, _ = run_decoder(ours_decoder, [prompt], 24, Sampling())
    theirs = ct2_generate(prompt, 24)
    same = list(new[0]) == list(theirs)
    checks.append({"runtime": "ctranslate2", "graph": "decode", "greedy_tokens_equal": same,
                   "passed": same})  # fmt: skip
    log(f"check ctranslate2: 24 greedy tokens {'equal' if same else 'DIFFER'} to ours (ort-opt)")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seq-lens", default="16,128,1024")
    parser.add_argument("--past-lens", default="128,1000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "docs" / "peers.json")
    args = parser.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    past_lens = [int(p) for p in args.past_lens.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)

    log("machine and GEMM rates")
    info = machine(threads_list)
    log(gemm_sentence(info))
    folder = make_checkpoint(args.size, args.work)
    ws = Workspace(args.work / "exported", folder)  # ours read the same checkpoint directory
    variant = ws.sized("baseline")
    cfg = get_variant(variant).config
    reference = hf_reference(folder)
    log("Optimum export (with past) and its O2 optimisation")
    optimum_paths = optimum_models(folder, args.work)
    log("CTranslate2 conversion")
    ct2_path = ctranslate2_dir(folder, args.work)

    checks, forward_rows, decode_rows, skipped = [], [], [], []
    for threads in threads_list:
        forwards, steps = {}, {}
        for name in ("torch", "ort", "ort-opt"):
            forwards[name] = lambda ids, r=build(name, "forward", ws, variant, threads): r.run(ids)
        for name in ("ort", "ort-opt"):
            steps[f"{name} decoder"] = lambda p, n=name, t=threads: step_runner(
                ws, n, variant, None, 1, p, t, 64
            )
        hf_forward, hf_step = hf_eager(folder, threads)
        forwards["hf-eager"], steps["hf-eager"] = hf_forward, hf_step
        for name, path in optimum_paths.items():
            fwd, stp = optimum_engine(path, threads)
            forwards[name], steps[name] = fwd, stp
        ct2_forward, ct2_step, ct2_generate = ctranslate2_engine(ct2_path, threads, cfg.vocab_size)
        forwards["ctranslate2"] = ct2_forward
        kept = check_forward(forwards, reference, cfg, checks)
        ours = build("ort-opt", "decoder", ws, variant, threads)
        if greedy_agreement(ours, ct2_generate, cfg, checks):
            steps["ctranslate2"] = ct2_step
        else:
            skipped.append({"runtime": "ctranslate2", "reason": "greedy tokens differ from ours"})
        for name in set(forwards) - set(kept):
            steps.pop(name, None)
            skipped.append({"runtime": name, "reason": "logits differ from transformers float64"})
        forward_rows += measure_forward(kept, seq_lens, threads, cfg, args.repeat)
        decode_rows += measure_decode(steps, past_lens, threads, args.repeat)

    result = {
        "what": "peers beside ours, one interleaved run per point (benchmarks/peers/peers.py)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "size": args.size,
        "variant": variant,
        "machine": info,
        "peer_versions": peer_versions(),
        "gemm_sentence": gemm_sentence(info),
        "checks": checks,
        "skipped": skipped,
        "forward": forward_rows,
        "decode": decode_rows,
    }
    write_text_atomic(args.out, json_text(result))
    log(f"wrote {args.out}")
    print(markdown(result))


def peer_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("optimum", "optimum-onnx", "transformers", "ctranslate2"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def markdown(result: dict) -> str:
    """Two tables (forward, decode step): p50 ms per runtime, one column per (point, threads)."""
    lines = []
    for kind, key in (("forward", "seq_len"), ("decode", "past_len")):
        rows = result[kind]
        points = sorted({(r[key], r["threads"]) for r in rows})
        names = list(dict.fromkeys(r["runtime"] for r in rows))
        label = "S" if key == "seq_len" else "P"
        lines.append(
            f"| {kind} p50 ms | " + " | ".join(f"{label}={p} t={t}" for p, t in points) + " |"
        )
        lines.append("| --- " * (len(points) + 1) + "|")
        for name in names:
            cells = []
            for p, t in points:
                hit = [
                    r["p50_ms"]
                    for r in rows
                    if r["runtime"] == name and r[key] == p and r["threads"] == t
                ]
                best = min(r["p50_ms"] for r in rows if r[key] == p and r["threads"] == t)
                cells.append(
                    "-" if not hit else (f"**{hit[0]:.3g}**" if hit[0] == best else f"{hit[0]:.3g}")
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
