"""Decode speed: one generation step at a given cache length, and whole generations.

Per point (past length P, threads, batch) the runtimes take turns, one step each:
- torch: eager model with the cache (one token per row attends P cached keys);
- torch-recompute: the naive loop's step, a full forward over the P + 1 tokens (no cache);
- ort / ort-opt: the portable / fused decoder graph, inputs and outputs bound once (IO binding);
- genai: onnxruntime-genai's own step, timed over the first steps after a prompt of P tokens.
End to end: time to first token and tokens/s for a whole generation through `generate`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import get_variant

DECODE_RUNTIMES = {  # what each decode runtime is, as the report describes it
    "torch": "eager torch with its cache",
    "torch-recompute": "the naive loop that recomputes the whole context",
    "ort": "the portable decoder graph in ONNX Runtime (inputs and outputs bound once)",
    "ort-opt": "the fused decoder graph in ONNX Runtime (inputs and outputs bound once)",
    "genai": "onnxruntime-genai's own step, timed over the steps right after a prompt of that length",
}


@dataclass
class StepRecord:
    runtime: str
    variant: str
    threads: int
    batch: int
    past_len: int
    p50_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def _torch_step(model, batch: int, past_len: int, threads: int, recompute: bool):
    import torch

    cfg = model.config
    rng = np.random.default_rng(0)
    if recompute:
        ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, past_len + 1)))

        def run():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                model(ids)
        return run
    past = [(torch.randn(batch, cfg.kv_heads, past_len, cfg.head_dim), torch.randn(batch, cfg.kv_heads, past_len,
                                                                                  cfg.head_dim))
            for _ in range(cfg.n_layers)]
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, 1)))
    mask = torch.ones(batch, past_len + 1, dtype=torch.int64)
    pos = torch.full((batch, 1), past_len)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(ids, past, mask, pos, use_cache=True)
    return run


def _ort_step(path: Path, cfg, batch: int, past_len: int, threads: int):
    from ..export.io_spec import past_names, present_names
    from .session import make_session

    # without spinning (unlike OrtDecoder): spinning workers would steal the cores of the runtime
    # whose burst comes next (measured: p90 up to 5x); the step times are conservative for ORT
    session = make_session(path, threads)
    rng = np.random.default_rng(0)
    binding = session.io_binding()
    keep = []  # the bound arrays must outlive the binding
    for name, arr in (("input_ids", rng.integers(0, cfg.vocab_size, (batch, 1))),
                      ("attention_mask", np.ones((batch, past_len + 1), np.int64)),
                      ("position_ids", np.full((batch, 1), past_len, np.int64))):
        keep.append(np.ascontiguousarray(arr, dtype=np.int64))
        binding.bind_cpu_input(name, keep[-1])
    for name in past_names(cfg):
        keep.append(rng.standard_normal((batch, cfg.kv_heads, past_len, cfg.head_dim)).astype(np.float32))
        binding.bind_cpu_input(name, keep[-1])
    for name in present_names(cfg):
        keep.append(np.empty((batch, cfg.kv_heads, past_len + 1, cfg.head_dim), np.float32))
        binding.bind_output(name, "cpu", 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data)
    keep.append(np.empty((batch, 1, cfg.vocab_size), np.float32))
    binding.bind_output("logits", "cpu", 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data)
    return lambda: (session.run_with_iobinding(binding), keep)


def _genai_step(folder: Path, cfg, batch: int, past_len: int, steps: int):
    """genai cannot be held at one cache length: each call is its next step after a prompt of P
    tokens (P = 1 stands in for 0), so `steps` calls span cache lengths P .. P + steps."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, max(past_len, 1))).astype(np.int32)
    state = {}

    def start():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=min(cfg.max_seq_len, prompt.shape[1] + steps + 2), batch_size=batch,
                                  do_sample=False)
        state["generator"] = og.Generator(model, params)
        state["generator"].append_tokens(prompt)
        state["generator"].generate_next_token()

    def step():
        if state["generator"].is_done():  # near the context limit: start again (one slow sample)
            start()
        state["generator"].generate_next_token()

    start()
    return step


def time_in_bursts(runners: dict, warmup: int, rounds: int, burst: int = 4, max_seconds: float = 6.0) -> dict:
    """Runtimes take turns in bursts of `burst` steps (the order rotating); the first step of a
    burst only re-warms the caches the other runtimes evicted and is not counted. Generation runs
    its steps back to back, so timing single steps between other runtimes' work would charge each
    one for cold caches (measured here: up to 2x at past 512)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runners}
    names, start = list(runners), time.perf_counter()
    for i in range(rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            runners[name]()
            for _ in range(burst - 1):
                t0 = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - t0) * 1e3)
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return times


def run_decode_bench(variant: str, runtimes: Sequence[str], threads: Sequence[int], batches: Sequence[int],
                     past_lens: Sequence[int], weights=None, out_dir="exported", repeat: int = 20, warmup: int = 3,
                     on_point: Optional[Callable[[list], None]] = None) -> list[StepRecord]:
    from ..api import load_model
    from ..export import ensure_export
    from ..weights import load_state_dict, weights_path

    cfg = get_variant(variant).config
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg)
    model = load_model(variant, state_dict=state_dict)
    files = {rt: ensure_export(variant, weights, Path(out_dir), state_dict, fl)
             for rt, fl in (("ort", "decoder"), ("ort-opt", "decoder-optimized")) if rt in runtimes}
    folder = None
    if "genai" in runtimes:
        from .genai import ensure_genai_folder

        folder = ensure_genai_folder(variant, weights, Path(out_dir), state_dict)
    records = []
    for n_threads in threads:
        if folder is not None:  # genai reads its thread count from the folder's config
            folder = ensure_genai_folder(variant, weights, Path(out_dir), state_dict, n_threads)
        for batch in batches:
            for past in past_lens:
                runners = {}
                for rt in runtimes:
                    if rt in ("torch", "torch-recompute"):
                        runners[rt] = _torch_step(model, batch, past, n_threads, rt == "torch-recompute")
                    elif rt in files:
                        runners[rt] = _ort_step(files[rt], cfg, batch, past, n_threads)
                    elif rt == "genai":
                        runners[rt] = _genai_step(folder, cfg, batch, past, warmup + 4 * repeat)
                times = time_in_bursts(runners, warmup, repeat)
                point = [StepRecord(rt, variant, n_threads, batch, past, float(np.percentile(t, 50)),
                                    float(np.percentile(t, 90)), len(t)) for rt, t in times.items()]
                records.extend(point)
                if on_point:
                    on_point(point)
    if folder is not None:
        _default_genai_threads(variant, weights, out_dir)
    return records


def end_to_end(variant: str, runtimes: Sequence[str], threads: int = 1, prompt_len: int = 32,
               new_tokens: int = 256, weights=None, out_dir="exported") -> list[dict]:
    """Time to first token and tokens/s of whole greedy generations (batch 1)."""
    from ..generate import generate

    prompt = [np.random.default_rng(0).integers(0, get_variant(variant).config.vocab_size, prompt_len).tolist()]
    rows = []
    for rt in runtimes:
        generate(variant, prompt, 4, rt if rt != "torch-recompute" else "torch", weights=weights, out_dir=out_dir,
                 threads=threads)  # warm-up (and export)
        result = _generate_any(rt, variant, prompt, new_tokens, weights, out_dir, threads)
        total = (result.ttft_ms + sum(result.step_ms)) / 1e3  # the generation itself, not loading
        rows.append({"runtime": rt, "threads": threads, "prompt_tokens": prompt_len, "new_tokens": new_tokens,
                     "ttft_ms": result.ttft_ms, "tokens_per_s": result.tokens_per_s, "total_s": total})
    if "genai" in runtimes:
        _default_genai_threads(variant, weights, out_dir)
    return rows


def _default_genai_threads(variant: str, weights, out_dir) -> None:
    """Leave the user's genai folder with ONNX Runtime's default threads, as export made it."""
    from ..weights import load_state_dict, weights_path
    from .genai import ensure_genai_folder

    cfg = get_variant(variant).config
    weights = weights_path(weights, cfg)
    ensure_genai_folder(variant, weights, Path(out_dir), load_state_dict(weights, cfg))


def _generate_any(runtime, variant, prompt, new_tokens, weights, out_dir, threads):
    from ..generate import GenerationResult, Sampling, TorchRecomputeDecoder, check_prompts, run_decoder
    from ..api import load_model

    if runtime != "torch-recompute":
        from ..generate import generate

        return generate(variant, prompt, new_tokens, runtime, weights=weights, out_dir=out_dir, threads=threads)
    decoder = TorchRecomputeDecoder(load_model(variant, weights=weights), threads)
    new, ttft, steps = run_decoder(decoder, check_prompts(prompt, new_tokens, get_variant(variant).config),
                                   new_tokens, Sampling())
    return GenerationResult(variant, runtime, new, [len(prompt[0])], new_tokens, ttft * 1e3,
                            len(steps) / sum(steps), [s * 1e3 for s in steps])


def decode_summary(data: dict) -> dict:
    """Table rows and sentences from the records (every number read from `data`)."""
    from .bench import gemm_peak_gflops, geomean

    steps, e2e = data["steps"], data["end_to_end"]
    key = lambda r: (r["variant"], r["threads"], r["batch"], r["past_len"])
    by = {(key(r), r["runtime"]): r for r in steps}
    step_rows = []
    for r in sorted(steps, key=lambda r: (*key(r), r["runtime"])):
        torch_ref, naive = by.get((key(r), "torch")), by.get((key(r), "torch-recompute"))
        step_rows.append((*key(r), r["runtime"], r["p50_ms"], r["p90_ms"],
                          torch_ref["p50_ms"] / r["p50_ms"] if torch_ref else None,
                          naive["p50_ms"] / r["p50_ms"] if naive else None))
    e2e_by = {(r["variant"], r["threads"], r["runtime"]): r for r in e2e}
    e2e_rows = []
    for r in e2e:
        naive = e2e_by.get((r["variant"], r["threads"], "torch-recompute"))
        e2e_rows.append((r["variant"], r["threads"], r["runtime"], r["ttft_ms"], r["tokens_per_s"], r["total_s"],
                         naive["total_s"] / r["total_s"] if naive else None))
    lines = []
    cfg = get_variant(data["variants"][0]).config
    lines.append(f"KV cache: {cfg.kv_cache_bytes_per_token():,} bytes per token per row "
                 f"(2 x {cfg.n_layers} layers x {cfg.kv_heads} key/value heads x {cfg.head_dim} floats x 4 B); "
                 f"{cfg.kv_cache_bytes_per_token() * cfg.max_seq_len / 2**20:.1f} MiB for a full 1024-token row.")
    for rt in ("ort", "ort-opt", "genai"):
        ratios = [row[7] for row in step_rows if row[4] == rt and row[7] is not None]
        if ratios:
            lines.append(f"{rt}: decode step vs eager torch with its cache: geo-mean {geomean(ratios):.2f}x, "
                         f"from {min(ratios):.2f}x to {max(ratios):.2f}x over {len(ratios)} points")
    for rt in ("ort", "ort-opt", "genai", "torch"):
        ratios = [row[6] for row in e2e_rows if row[2] == rt and row[6] is not None]
        if ratios:
            lines.append(f"{rt}: whole generation vs the naive recomputing loop: {min(ratios):.1f}x to "
                         f"{max(ratios):.1f}x faster")
    genai = [(r, e2e_by.get((r["variant"], r["threads"], "ort-opt"))) for r in e2e if r["runtime"] == "genai"]
    genai = [(g, o) for g, o in genai if o]
    if genai:
        worst = max(g["total_s"] / o["total_s"] for g, o in genai)
        lines.append(f"genai vs our ort-opt loop, whole generation: at most {worst:.2f}x its time")
    peak = gemm_peak_gflops(1)
    data["machine"] = {"gemm_peak_gflops_1_thread": round(peak, 1)}
    lines.append(f"reference: a 1024^3 fp32 MatMul in ORT reaches {peak:.0f} GFLOP/s on 1 thread on this machine")
    return {"step_rows": step_rows, "e2e_rows": e2e_rows, "lines": lines}
