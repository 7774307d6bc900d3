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
from typing import Optional

import numpy as np

from ..config import get_variant
from ..runtime.registry import build, build_step_timer, get_runtime, runtime_with
from .harness import Stats, take_turns, time_interleaved


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


BURST = 4  # steps per turn; the first of each re-warms the caches and is not counted


@dataclass(frozen=True)
class DecodePlan:
    """What a decode benchmark times: one step per (runtime, threads, batch, past length) for
    each variant, the runtimes taking turns in bursts; then whole generations of `new_tokens`."""

    variants: tuple[str, ...]
    runtimes: tuple[str, ...]
    threads: tuple[int, ...]
    batches: tuple[int, ...] = (1,)
    past_lens: tuple[int, ...] = (0, 128, 512, 1000)
    repeat: int = 20
    new_tokens: int = 256
    warmup: int = 3


def run_decode_bench(
    workspace,
    plan: DecodePlan,
    variant: str,
    on_point: Optional[Callable[[list], None]] = None,
) -> list[StepRecord]:
    """The plan's decode steps of one variant, the runtimes taking turns in bursts of BURST."""
    runtimes, threads, batches, past_lens = (
        plan.runtimes,
        plan.threads,
        plan.batches,
        plan.past_lens,
    )
    warmup, repeat = plan.warmup, plan.repeat
    model = workspace.model(variant)
    records = []
    try:
        for n_threads in threads:
            for batch in batches:
                for past in past_lens:
                    runners = {
                        rt: build_step_timer(
                            rt,
                            workspace,
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
        _reset_folders(workspace, variant, runtimes)
    return records


def _reset_folders(workspace, variant: str, runtimes) -> None:
    """Leave the user's folders at their runtime's default threads (builds set them)."""
    if any(get_runtime(rt).folder_threads for rt in runtimes):
        workspace.genai_folder(variant)


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
        results = take_turns(
            runs,
            repeats,
            on_round=(lambda i: on_round(f"threads {threads}, round {i + 1}/{repeats}"))
            if on_round
            else None,
        )
    finally:
        _reset_folders(workspace, variant, runtimes)
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
    quantization (the default recipe of these bits, pipeline/export/weight_recipes.py) the
    projections at `weight_bits` and the LM head at the recipe's head bits, each with one float32
    scale per block, and the rest in float32."""
    if weight_bits >= 32:
        return cfg.n_params() * 4
    from ..export.weight_recipes import DEFAULT_RECIPE, RECIPES, WeightRecipe

    recipe = RECIPES[DEFAULT_RECIPE[weight_bits]] if weight_bits in DEFAULT_RECIPE else None
    recipe = recipe or WeightRecipe(bits=weight_bits)

    def stored(n: int, bits: int) -> int:
        return n * 4 if bits >= 32 else n * bits // 8 + n // recipe.block * 4

    head = cfg.vocab_size * cfg.d_model
    body = cfg.matmul_params() - head
    return (
        stored(body, weight_bits)
        + stored(head, recipe.head_bits or weight_bits)
        + (cfg.n_params() - body - head) * 4
    )


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


def decode_rows(data: dict) -> dict:
    """The step and whole-generation tables' rows from the records (every number read from
    `data`, measuring nothing: the GEMM rates come from data["machine"]); report/ words them."""
    steps, e2e = data["steps"], data["end_to_end"]
    reference, naive_name = runtime_with("reference"), runtime_with("naive")
    key = lambda r: (r["variant"], r["threads"], r["batch"], r["past_len"])
    by = {(key(r), r["runtime"]): r for r in steps}
    step_rows = []
    for r in sorted(steps, key=lambda r: (*key(r), r["runtime"])):
        ref, naive = by.get((key(r), reference)), by.get((key(r), naive_name))
        floor = _floor(r, data.get("machine"))
        step_rows.append(
            (
                *key(r),
                r["runtime"],
                r["p50_ms"],
                r["p90_ms"],
                ref["p50_ms"] / r["p50_ms"] if ref else None,
                naive["p50_ms"] / r["p50_ms"] if naive else None,
                floor[0] if floor else None,
                f"{r['p50_ms'] / floor[0]:.1f}x {floor[1]}" if floor else None,
            )
        )
    e2e_by = {(r["variant"], r["threads"], r["runtime"]): r for r in e2e}
    e2e_rows = []
    for r in e2e:
        naive = e2e_by.get((r["variant"], r["threads"], naive_name))
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
    return {"step_rows": step_rows, "e2e_rows": e2e_rows}


def bench_decode(
    workspace,
    plan: DecodePlan,
    on_point: Optional[Callable[[list], None]] = None,
    on_round: Optional[Callable[[str], None]] = None,
) -> dict:
    """`pipeline bench --mode decode`: steps and whole generations of every variant, with the
    machine and the tables' rows. on_point after each step point, on_round after each round of
    whole generations (E2E_REPEATS + 1 per variant and thread count)."""
    from ..errors import PipelineError
    from .harness import machine

    longest = min(get_variant(v).config.max_seq_len for v in plan.variants)
    if max(plan.past_lens) + 1 > longest:
        raise PipelineError(
            f"--past-lens: {max(plan.past_lens)} leaves no room for a new token in {longest}"
        )
    workspace.prepare(
        [(v, get_runtime(rt).decoder_flavour) for v in plan.variants for rt in plan.runtimes]
    )
    data = {
        "variants": list(plan.variants),
        "runtimes": list(plan.runtimes),
        "steps": [],
        "end_to_end": [],
    }
    for name in plan.variants:
        steps = run_decode_bench(workspace, plan, name, on_point=on_point)
        data["steps"] += [r.to_dict() for r in steps]
        for t in plan.threads:
            data["end_to_end"] += [
                {"variant": name, **row}
                for row in end_to_end(
                    workspace, name, plan.runtimes, t, new_tokens=plan.new_tokens, on_round=on_round
                )
            ]
    data["machine"] = machine(plan.threads)
    data.update(decode_rows(data))
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
