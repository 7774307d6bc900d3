"""Decode speed: one generation step at a given cache length, and whole generations.

Per point (past length P, threads, batch) the runtimes take turns, one step each:
- torch: eager model with the cache (one token per row attends P cached keys);
- torch-recompute: the naive loop's step, a full forward over the P + 1 tokens (no cache);
- ort / ort-opt: the portable / fused decoder graph, inputs and outputs bound once (IO binding);
- genai: onnxruntime-genai's own step, timed over the first steps after a prompt of P tokens.
End to end: time to first token and tokens/s for a whole generation through `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import get_variant
from ..export.flavours import FLAVOURS
from ..runtime.registry import RUNTIMES, build, get_runtime
from .harness import Stats, gemm_sentence, geomean, time_interleaved

# how each decode runtime's step is timed, where the registry's description does not say it
STEP_NOTES = {
    "ort": "inputs and outputs bound once",
    "ort-opt": "inputs and outputs bound once",
    "genai": "timed over the steps right after a prompt of that length",
}


def describe(runtime: str) -> str:
    note = STEP_NOTES.get(runtime)
    return get_runtime(runtime).description + (f" ({note})" if note else "")


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
    past = [
        (
            torch.randn(batch, cfg.kv_heads, past_len, cfg.head_dim),
            torch.randn(batch, cfg.kv_heads, past_len, cfg.head_dim),
        )
        for _ in range(cfg.n_layers)
    ]
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, 1)))
    mask = torch.ones(batch, past_len + 1, dtype=torch.int64)
    pos = torch.full((batch, 1), past_len)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(ids, past, mask, pos, use_cache=True)

    return run


def _ort_step(path: Path, cfg, batch: int, past_len: int, threads: int, in_place: bool = False):
    """in_place: the fused decoders' way, one [B, N_kv, S_max, h] buffer per cache tensor bound
    as past and present (GroupQueryAttention writes the new key where the row ends); else the
    standard contract, past [B, N_kv, P, h] read and present [B, N_kv, P + 1, h] written anew."""
    from ..export.io_spec import past_names, present_names
    from ..runtime.session import make_session

    # without spinning (unlike OrtDecoder): spinning workers would steal the cores of the runtime
    # whose burst comes next (measured: p90 up to 5x); the step times are conservative for ORT
    session = make_session(path, threads)
    rng = np.random.default_rng(0)
    binding = session.io_binding()
    keep = []  # the bound arrays must outlive the binding
    for name, arr in (
        ("input_ids", rng.integers(0, cfg.vocab_size, (batch, 1))),
        ("attention_mask", np.ones((batch, past_len + 1), np.int64)),
        ("position_ids", np.full((batch, 1), past_len, np.int64)),
    ):
        keep.append(np.ascontiguousarray(arr, dtype=np.int64))
        binding.bind_cpu_input(name, keep[-1])
    if in_place:
        shape = [batch, cfg.kv_heads, cfg.max_seq_len, cfg.head_dim]
        for past, present in zip(past_names(cfg), present_names(cfg)):
            keep.append(rng.standard_normal(shape).astype(np.float32))
            binding.bind_input(past, "cpu", 0, np.float32, shape, keep[-1].ctypes.data)
            binding.bind_output(present, "cpu", 0, np.float32, shape, keep[-1].ctypes.data)
    else:
        for name in past_names(cfg):
            keep.append(
                rng.standard_normal((batch, cfg.kv_heads, past_len, cfg.head_dim)).astype(
                    np.float32
                )
            )
            binding.bind_cpu_input(name, keep[-1])
        for name in present_names(cfg):
            keep.append(np.empty((batch, cfg.kv_heads, past_len + 1, cfg.head_dim), np.float32))
            binding.bind_output(
                name, "cpu", 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data
            )
    keep.append(np.empty((batch, 1, cfg.vocab_size), np.float32))
    binding.bind_output("logits", "cpu", 0, np.float32, list(keep[-1].shape), keep[-1].ctypes.data)
    return lambda: (session.run_with_iobinding(binding), keep)


def _genai_step(folder: Path, cfg, batch: int, past_len: int, steps: int):
    """genai cannot be held at one cache length: each call is its next step after a prompt of P
    tokens (P = 1 stands in for 0), so `steps` calls span cache lengths P .. P + steps."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    # near the context's end the prompt is shortened so that the steps still fit after it
    prompt_len = max(1, min(past_len, cfg.max_seq_len - steps - 2))
    prompt = (
        np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
    )
    max_length = min(cfg.max_seq_len, prompt_len + steps + 2)
    state = {}

    def start():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, batch_size=batch, do_sample=False)
        state["generator"] = og.Generator(model, params)
        state["generator"].append_tokens(prompt)
        state["generator"].generate_next_token()
        state["length"] = prompt_len + 1

    def step():
        # at the context limit: start again (one slow sample); genai raises past max_length
        if state["generator"].is_done() or state["length"] >= max_length:
            start()
        state["generator"].generate_next_token()
        state["length"] += 1

    start()
    return step


def _decoder_step(decoder, cfg, batch: int, past_len: int, steps: int):
    """Any registry decoder that cannot be held at one cache length: each call is its next step
    after a prompt of P tokens (P = 1 stands in for 0), restarting near the context limit."""
    from ..runtime.decoders import positions_from_mask

    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, max(past_len, 1)))
    state = {}

    def start():
        mask = np.ones_like(prompt)
        decoder.prefill(prompt, mask, positions_from_mask(mask))
        state["mask"], state["pos"] = mask, np.full(batch, prompt.shape[1])

    def step():
        if state["pos"][0] + 1 >= min(cfg.max_seq_len, prompt.shape[1] + steps + 2):
            start()
        state["mask"] = np.ones((batch, state["pos"][0] + 1), np.int64)
        decoder.step(np.zeros(batch, np.int64), state["mask"], state["pos"])
        state["pos"] = state["pos"] + 1

    start()
    return step


def step_runner(
    workspace, runtime: str, variant: str, model, batch: int, past: int, threads: int, steps: int
):
    """A callable that runs one decode step of the runtime at past length P (batch rows)."""
    cfg = get_variant(variant).config
    if runtime in ("torch", "torch-recompute"):
        return _torch_step(model, batch, past, threads, runtime == "torch-recompute")
    if runtime in ("ort", "ort-opt"):
        flavour = get_runtime(runtime).decoder_flavour
        return _ort_step(
            workspace.artifact(variant, flavour),
            cfg,
            batch,
            past,
            threads,
            in_place=FLAVOURS[flavour].fused,
        )
    if runtime == "genai":
        return _genai_step(workspace.genai_folder(variant, threads), cfg, batch, past, steps)
    return _decoder_step(
        build(runtime, "decoder", workspace, variant, threads), cfg, batch, past, steps
    )


BURST = 4  # steps per turn; the first of each re-warms the caches and is not counted


def run_decode_bench(
    workspace,
    variant: str,
    runtimes: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    past_lens: Sequence[int],
    repeat: int = 20,
    warmup: int = 3,
    on_point: Optional[Callable[[list], None]] = None,
) -> list[StepRecord]:
    """One decode step per (runtime, threads, batch, past length), the runtimes taking turns in
    bursts of BURST steps."""
    model = workspace.model(variant)
    records = []
    try:
        for n_threads in threads:
            for batch in batches:
                for past in past_lens:
                    runners = {
                        rt: step_runner(
                            workspace,
                            rt,
                            variant,
                            model,
                            batch,
                            past,
                            n_threads,
                            warmup + BURST * repeat,
                        )
                        for rt in runtimes
                    }
                    times = time_interleaved(
                        runners, warmup, repeat, max_seconds=6.0, burst=BURST, min_rounds=3
                    )
                    point = [
                        StepRecord(rt, variant, n_threads, batch, past, **_p50_p90(t))
                        for rt, t in times.items()
                    ]
                    records.extend(point)
                    if on_point:
                        on_point(point)
    finally:
        if "genai" in runtimes:
            workspace.genai_folder(
                variant
            )  # leave the user's folder at ONNX Runtime's default threads
    return records


def _p50_p90(times) -> dict:
    stats = Stats.of(times)
    return {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "runs": stats.runs}


def _generation(workspace, runtime: str, variant: str, threads: int, prompt, new_tokens: int):
    """One whole greedy generation of the runtime as a callable -> (ttft s, step times s): its
    decoder built once, so repeats time generation, not loading."""
    from ..generation import Sampling, run_decoder

    decoder = build(runtime, "decoder", workspace, variant, threads)
    if hasattr(decoder, "generate"):  # onnxruntime-genai runs its own loop
        return lambda: decoder.generate([prompt], new_tokens, Sampling(), None)[1:]
    return lambda: run_decoder(decoder, [prompt], new_tokens, Sampling(), runtime=runtime)[1:]


E2E_REPEATS = 5  # whole generations of each runtime after the warm-up round


def end_to_end(
    workspace,
    variant: str,
    runtimes: Sequence[str],
    threads: int = 1,
    prompt_len: int = 32,
    new_tokens: int = 256,
    repeats: int = E2E_REPEATS,
    on_round: Optional[Callable[[str], None]] = None,
) -> list[dict]:
    """Time to first token and tokens/s of whole greedy generations (batch 1): `repeats` of
    each, the runtimes taking turns (order rotating), medians reported, so they agree with the
    step table rather than with one lucky or unlucky run. on_round(name) after the warm-up
    round and each timed round (repeats + 1 calls: at gpt2-124m a round takes a minute)."""
    cfg = get_variant(variant).config
    new_tokens = min(new_tokens, cfg.max_seq_len - prompt_len)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, prompt_len).tolist()
    try:
        runs = {
            rt: _generation(workspace, rt, variant, threads, prompt, new_tokens) for rt in runtimes
        }
        for run in runs.values():
            run()  # warm-up
        if on_round:
            on_round(f"threads {threads}, warm-up round")
        results: dict[str, list] = {rt: [] for rt in runs}
        names = list(runs)
        for i in range(repeats):
            for rt in names[i % len(names) :] + names[: i % len(names)]:
                results[rt].append(runs[rt]())
            if on_round:
                on_round(f"threads {threads}, round {i + 1}/{repeats}")
    finally:
        if "genai" in runtimes:
            workspace.genai_folder(variant)  # leave the user's folder at ORT's default threads
    rows = []
    for rt, done in results.items():
        ttft = [t * 1e3 for t, _ in done]
        rate = [len(steps) / sum(steps) for _, steps in done if sum(steps) > 0]
        total = [t + sum(steps) for t, steps in done]
        rows.append(
            {
                "runtime": rt,
                "threads": threads,
                "prompt_tokens": prompt_len,
                "new_tokens": new_tokens,
                "ttft_ms": float(np.median(ttft)),
                "tokens_per_s": float(np.median(rate)) if rate else float("nan"),
                "total_s": float(np.median(total)),
                "runs": len(done),
            }
        )
    return rows


def decode_weight_bytes(cfg, weight_bits: int = 32) -> int:
    """Bytes of weights one decode step reads: every parameter in float32, or with weight-only
    quantization the projections and LM head at `weight_bits` plus one float32 scale per block
    (the blocks of pipeline/export/flavours.py) and the rest in float32."""
    if weight_bits >= 32:
        return cfg.n_params() * 4
    from ..export.flavours import WEIGHT_BLOCK

    quantized = cfg.matmul_params()
    stored = quantized * weight_bits // 8 + quantized // WEIGHT_BLOCK * 4
    return stored + (cfg.n_params() - quantized) * 4


def step_floor_ms(
    cfg, batch: int, past_len: int, gemm_gflops: float, memory_gbs: float, weight_bits: int = 32
):
    """(floor ms, what bounds it) of one decode step: every weight is read once (the LM head
    matrix included, in the bits the runtime stores) and each row's cache of P tokens, at the
    memory bandwidth; the step's FLOPs (2 per weight per row, and attention over P keys) at the
    GEMM rate. The larger is the floor."""
    cache_bytes = cfg.kv_cache_bytes_per_token() * past_len * batch
    flops = 2 * cfg.n_params() * batch + 4 * (past_len + 1) * cfg.d_model * cfg.n_layers * batch
    memory_ms = (decode_weight_bytes(cfg, weight_bits) + cache_bytes) / (memory_gbs * 1e9) * 1e3
    compute_ms = flops / (gemm_gflops * 1e9) * 1e3
    return (memory_ms, "memory") if memory_ms >= compute_ms else (compute_ms, "compute")


def _floor(row: dict, machine_info: Optional[dict]):
    """The step's floor on the machine of the record (None for records without a bandwidth)."""
    if not machine_info or not machine_info.get("memory_gbs"):
        return None
    runtime = get_runtime(row["runtime"])
    library = runtime.gemm_library
    rates = machine_info["gemm_gflops"].get(library) or machine_info["gemm_gflops"]["onnxruntime"]
    rate = rates.get(str(row["threads"]))
    if rate is None:
        return None
    cfg = get_variant(row["variant"]).config
    return step_floor_ms(
        cfg, row["batch"], row["past_len"], rate, machine_info["memory_gbs"], runtime.weight_bits
    )


def _against_ort_opt(e2e: list[dict]) -> list[str]:
    """Whole generations against our float32 ort-opt loop at the same thread count: genai's loop
    on the same graph (time), and the weight-only quantized decoders (tokens/s)."""
    ours = {(r["variant"], r["threads"]): r for r in e2e if r["runtime"] == "ort-opt"}

    def pairs(runtime):
        return [
            (r, ours[(r["variant"], r["threads"])])
            for r in e2e
            if r["runtime"] == runtime and (r["variant"], r["threads"]) in ours
        ]

    lines = []
    ratios = [o["total_s"] / g["total_s"] for g, o in pairs("genai")]
    if ratios:
        lines.append(
            f"our ort-opt loop vs genai on the same graph, whole generation: {min(ratios):.2f}x to "
            f"{max(ratios):.2f}x genai's time"
        )
    for rt in (r for r in RUNTIMES if get_runtime(r).weight_bits < 32):
        ratios = [q["tokens_per_s"] / f["tokens_per_s"] for q, f in pairs(rt)]
        if ratios:
            lines.append(
                f"{rt}: whole generation at {min(ratios):.2f}x to {max(ratios):.2f}x the tokens/s "
                "of the float32 ort-opt decoder"
            )
    return lines


def decode_summary(data: dict) -> dict:
    """Table rows and sentences from the records (every number read from `data`, measuring
    nothing: the GEMM rates come from data["machine"])."""

    steps, e2e = data["steps"], data["end_to_end"]
    key = lambda r: (r["variant"], r["threads"], r["batch"], r["past_len"])
    by = {(key(r), r["runtime"]): r for r in steps}
    step_rows = []
    for r in sorted(steps, key=lambda r: (*key(r), r["runtime"])):
        torch_ref, naive = by.get((key(r), "torch")), by.get((key(r), "torch-recompute"))
        floor = _floor(r, data.get("machine"))
        step_rows.append(
            (
                *key(r),
                r["runtime"],
                r["p50_ms"],
                r["p90_ms"],
                torch_ref["p50_ms"] / r["p50_ms"] if torch_ref else None,
                naive["p50_ms"] / r["p50_ms"] if naive else None,
                floor[0] if floor else None,
                f"{r['p50_ms'] / floor[0]:.1f}x {floor[1]}" if floor else None,
            )
        )
    e2e_by = {(r["variant"], r["threads"], r["runtime"]): r for r in e2e}
    e2e_rows = []
    for r in e2e:
        naive = e2e_by.get((r["variant"], r["threads"], "torch-recompute"))
        e2e_rows.append(
            (
                r["variant"],
                r["threads"],
                r["runtime"],
                r["ttft_ms"],
                r["tokens_per_s"],
                r["total_s"],
                naive["total_s"] / r["total_s"] if naive else None,
            )
        )
    lines = []
    cfg = get_variant(data["variants"][0]).config
    lines.append(
        f"KV cache: {cfg.kv_cache_bytes_per_token():,} bytes per token per row "
        f"(2 x {cfg.n_layers} layers x {cfg.kv_heads} key/value heads x {cfg.head_dim} floats x 4 B); "
        f"{cfg.kv_cache_bytes_per_token() * cfg.max_seq_len / 2**20:.1f} MiB for a full 1024-token row."
    )
    for rt in (r for r in RUNTIMES if not r.startswith("torch")):
        ratios = [row[7] for row in step_rows if row[4] == rt and row[7] is not None]
        if ratios:
            lines.append(
                f"{rt}: decode step vs eager torch with its cache: geo-mean {geomean(ratios):.2f}x, "
                f"from {min(ratios):.2f}x to {max(ratios):.2f}x over {len(ratios)} points"
            )
    for rt in (r for r in RUNTIMES if r != "torch-recompute"):
        ratios = [row[6] for row in e2e_rows if row[2] == rt and row[6] is not None]
        if ratios:
            lines.append(
                f"{rt}: whole generation vs the naive recomputing loop: {min(ratios):.1f}x to "
                f"{max(ratios):.1f}x faster"
            )
    lines += _against_ort_opt(e2e)
    if data.get("machine"):
        lines.append(f"reference: {gemm_sentence(data['machine'])}")
        if data["machine"].get("memory_gbs"):
            lines.append(
                f"floor: a step reads every weight and each row's cache once, at the "
                f"{data['machine']['memory_gbs']:.0f} GB/s a 256 MiB copy reached in this run, "
                "and does its FLOPs at the GEMM rate; the larger of the two is the floor (a DRAM "
                "floor: weights that fit in the CPU's caches, as the tiny model's 13 MB may, can "
                "beat it)"
            )
    return {"step_rows": step_rows, "e2e_rows": e2e_rows, "lines": lines}


def bench_decode(
    workspace,
    variants: Sequence[str],
    runtimes: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    past_lens: Sequence[int],
    repeat: int = 20,
    new_tokens: int = 256,
    on_point: Optional[Callable[[list], None]] = None,
    on_round: Optional[Callable[[str], None]] = None,
) -> dict:
    """`pipeline bench --mode decode`: steps and whole generations of every variant, with the
    machine and the summary's rows and lines. on_point after each step point, on_round after
    each round of whole generations (E2E_REPEATS + 1 per variant and thread count)."""
    from ..errors import PipelineError
    from .harness import machine

    longest = min(get_variant(v).config.max_seq_len for v in variants)
    if max(past_lens) + 1 > longest:
        raise PipelineError(
            f"--past-lens: {max(past_lens)} leaves no room for a new token in {longest}"
        )
    data = {"variants": list(variants), "runtimes": list(runtimes), "steps": [], "end_to_end": []}
    for name in variants:
        steps = run_decode_bench(
            workspace, name, runtimes, threads, batches, past_lens, repeat, on_point=on_point
        )
        data["steps"] += [r.to_dict() for r in steps]
        for t in threads:
            data["end_to_end"] += [
                {"variant": name, **row}
                for row in end_to_end(
                    workspace, name, runtimes, t, new_tokens=new_tokens, on_round=on_round
                )
            ]
    data["machine"] = machine(threads)
    data.update(decode_summary(data))
    return data


STEP_HEADERS = [
    "variant",
    "threads",
    "batch",
    "past",
    "runtime",
    "p50 ms/step",
    "p90 ms",
    "torch(cache)/this",
    "recompute/this",
    "floor ms",
    "x floor (bound)",
]
E2E_HEADERS = ["variant", "threads", "runtime", "TTFT ms", "tokens/s", "total s", "vs recompute"]
