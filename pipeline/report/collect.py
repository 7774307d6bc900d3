"""The report's first step: measure everything once and return it as data (report.json).

Each quantity is measured once and referenced wherever the report shows it; the machine
(CPU, ISA, GEMM rates) is described once for the whole run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ..config import VARIANTS, get_variant
from ..runtime.registry import runtime_with

# the report's runtimes, by their registry role
REFERENCE, PORTABLE, FAST, QUANTIZED = map(
    runtime_with, ("reference", "portable", "fast", "quantized")
)
HEADLINE = (REFERENCE, FAST)  # the pair every section times
EXACT_FILES = (REFERENCE, PORTABLE, FAST)  # the eager model and both ORT files


@dataclass
class Sizes:
    """How much to measure. The default is what `pipeline all` measures; full=True adds
    the dense length sweep, ORT in the config sweep, the family's latency-vs-S curves, the
    portable file in the variant comparison and more repeats. Tests shrink the rest."""

    full: bool = False
    bench_seq_lens: tuple = (1, 16, 128, 512, 1024)
    bench_threads: Optional[tuple] = None
    compare_seq_lens: tuple = (128, 1024)
    sweep_seq_lens: Optional[tuple] = None
    config_grid: Optional[dict] = None
    family_seq_lens: Optional[tuple] = None
    memory_seq_len: int = 1024
    decode_past_lens: tuple = (0, 128, 512, 1000)
    decode_new_tokens: Optional[int] = None
    variants: Optional[tuple] = None  # the variants compared (None: every one that applies)

    def compared(self) -> tuple[str, ...]:
        return tuple(self.variants or VARIANTS)

    def family(self) -> tuple[str, ...]:
        """The attention family among the compared variants."""
        from ..measure.sweep import FAMILY

        return tuple(v for v in FAMILY if v in self.compared())

    def repeats(self, full: int, short: int) -> int:
        return full if self.full else short

    def fitted(self, max_seq_len: int) -> Sizes:
        """These sizes with every length within the model's context (a checkpoint's may be
        shorter than 1024) and the defaults that depend on --full filled in."""
        from ..measure import sweep

        def fit(lens, limit=max_seq_len):
            return sweep.within_limit(lens, limit)

        new_tokens = min(self.decode_new_tokens or (256 if self.full else 64), max_seq_len - 33)
        return dataclasses.replace(
            self,
            bench_seq_lens=fit(self.bench_seq_lens),
            compare_seq_lens=fit(self.compare_seq_lens),
            sweep_seq_lens=fit(self.sweep_seq_lens or sweep.SEQ_LENS),
            family_seq_lens=fit(self.family_seq_lens or sweep.FAMILY_SEQ_LENS),
            memory_seq_len=min(self.memory_seq_len, max_seq_len),
            # a step after a cache of P tokens needs P + 1 positions
            decode_past_lens=fit(self.decode_past_lens, max_seq_len - 1),
            decode_new_tokens=max(new_tokens, 2),
        )


def forward_runtimes(full: bool) -> list[str]:
    """The report's forward runtimes: the registry's defaults and the quantized one; with --full every
    installed exact one without a long compile too (OpenVINO f32)."""
    from ..runtime.registry import RUNTIMES, runtime_names

    def chosen(rt):
        extra = full and RUNTIMES[rt].exact and not RUNTIMES[rt].slow_setup
        return rt == QUANTIZED or RUNTIMES[rt].default or extra

    return [rt for rt in runtime_names("forward") if RUNTIMES[rt].missing() is None and chosen(rt)]


def collect(
    workspace,
    examples=None,
    sizes: Sizes = Sizes(),
    on_step: Optional[Callable[[str], None]] = None,
    text_file=None,
) -> dict:
    """Every measurement of the report, as one JSON-ready dict; with a text file, also the
    baseline's full-forward runtimes scored on it as `pipeline eval` does."""
    from ..measure.harness import default_threads, machine
    from ..measure.stability import LoadProbe

    step = on_step or (lambda s: None)
    base = workspace.sized("baseline")  # the spec's model, or a checkpoint's at its own size
    cfg = get_variant(base).config
    _refuse_bad_inputs(workspace, base, cfg, examples, text_file)
    sizes = sizes.fitted(cfg.max_seq_len)
    started = time.perf_counter()
    probe = LoadProbe.start()
    threads = list(sizes.bench_threads or default_threads())
    step("export")
    export_needed(workspace, base, sizes)
    results: dict = {
        "full": sizes.full,
        "threads": threads,
        "model": model_record(base, workspace.weights),
    }
    step("memory")
    from ..measure.memory import measure_memory

    results["memory"] = measure_memory(workspace, base, sizes.memory_seq_len)
    step("bench")
    results["bench"] = _bench(workspace, base, sizes, threads)
    from ..measure.compare import quantization_accuracy

    results["int8"] = quantization_accuracy(workspace, base, examples)
    step("compare")
    from ..measure.compare import compare_variants

    results["compare"] = compare_variants(
        workspace,
        [workspace.sized(v) for v in sizes.compared()],
        examples,
        seq_lens=sizes.compare_seq_lens,
        runtimes=EXACT_FILES if sizes.full else HEADLINE,
        repeat=sizes.repeats(15, 5),
    )
    step("decode")
    results["decode"] = _decode(workspace, base, sizes, threads)
    step("family decode")
    results["family_decode"] = _family_decode(workspace, sizes, threads)
    step("sweep")
    results.update(_sweeps(workspace, base, sizes, results["bench"]["records"], threads, step))
    results["quality"] = _quality(workspace, base, text_file, step)
    results["machine"] = machine(threads)  # every GEMM rate was measured above, once
    results["stability"] = run_stability(results, probe.stop())
    results["seconds"] = time.perf_counter() - started
    return results


def _refuse_bad_inputs(workspace, base: str, cfg, examples, text_file) -> None:
    """Bad weights, examples or text (one the model's tokenizer cannot read) are refused before
    any measuring."""
    from ..examples import example_input_ids

    workspace.state_dict(base)
    example_input_ids(cfg, examples)
    if text_file is not None:
        from ..check.quality import text_ids

        text_ids(workspace, base, text_file=text_file, ids_option="`pipeline eval --ids-file`")


def _quality(workspace, base: str, text_file, step) -> Optional[dict]:
    """The baseline's runtimes scored on the text (None without one), 1 thread."""
    if text_file is None:
        return None
    step("quality on the text")
    from ..check.quality import score_text_file
    from ..runtime.registry import text_runtimes

    return score_text_file(workspace, base, text_file, text_runtimes(), 1)


def run_stability(results: dict, load: dict) -> dict:
    """What the report's run says of its own numbers: the bench's unstable points, the machine's
    load over the whole run, and its GEMM rates measured once more at the end."""
    from ..measure.harness import gemm_again
    from ..measure.stability import gemm_problems, stability_summary

    after = gemm_again(results["machine"]["gemm_gflops"])
    results["machine"]["gemm_gflops_after"] = after
    records = results["bench"]["records"]
    return stability_summary(
        (f"{r['runtime']}/{r['variant']}/{r['threads']}t/S={r['seq_len']}: "
         + ", ".join(r["unstable"]) for r in records if r.get("unstable")),
        len(records),
        load,
        gemm_problems(results["machine"]["gemm_gflops"], after),
    )  # fmt: skip


def needed_artifacts(workspace, base: str, sizes: Sizes) -> list[tuple[str, str]]:
    """(variant, flavour) of every file the report loads: baseline's for memory, bench and
    decode, every compared variant's for the comparison, the family's fused decoders."""
    from ..runtime.registry import get_runtime

    full = sizes.full

    def forward(runtimes):
        return [get_runtime(rt).forward_flavour for rt in runtimes if get_runtime(rt).forward]

    def decoder(runtimes):
        return [get_runtime(rt).decoder_flavour for rt in runtimes if get_runtime(rt).decoder]

    pairs = [(base, f) for f in ["portable", "optimized", *forward(forward_runtimes(full))]]
    pairs += [(base, f) for f in decoder(decode_runtimes(full))]
    compared = EXACT_FILES if full else HEADLINE
    pairs += [(workspace.sized(v), f) for v in sizes.compared() for f in forward(compared)]
    pairs += [(workspace.sized(v), f) for v in sizes.family() for f in decoder([FAST])]
    return [(v, f) for v, f in dict.fromkeys(pairs) if f is not None]


def export_needed(workspace, base: str, sizes: Sizes) -> None:
    """Every file the report loads, exported before measuring starts (Workspace.prepare)."""
    workspace.prepare(needed_artifacts(workspace, base, sizes))


def model_record(base: str, weights=None) -> dict:
    """What the report measured: the baseline's name, its size and that size's fields, so that
    `report --from` can name the variants of a checkpoint in a process that never read it, and
    the weights file given (None: the stand-in the package ships or makes)."""
    from ..config import CHECKPOINT_SIZES, SIZES, variant_size

    size = variant_size(base)
    return {
        "baseline": base,
        "size": size,
        "size_fields": SIZES[size],
        "checkpoint": CHECKPOINT_SIZES.get(size),
        "config": get_variant(base).config.to_dict(),
        "weights": None if weights is None else str(weights),
    }


def _bench(workspace, base: str, sizes: Sizes, threads: list[int]) -> dict:
    from ..measure.forward import ForwardPlan, profile_ops, run_bench, speedups

    plan = ForwardPlan(
        tuple(forward_runtimes(sizes.full)),
        (base,),
        tuple(threads),
        tuple(sizes.bench_seq_lens),
        warmup=2,
        repeat=sizes.repeats(20, 8),
        max_seconds=3.0,
    )
    records = run_bench(workspace, plan)
    return {
        "records": [r.to_dict() for r in records],
        "speedups_vs_torch": speedups(records),
        "profile": profile_ops(
            workspace.artifact(base, "optimized"),
            max(sizes.bench_seq_lens),
            1,
            runs=3,
            vocab_size=get_variant(base).config.vocab_size,
        ),
    }


def decode_runtimes(full: bool) -> tuple[str, ...]:
    """The decode section's runtimes: the portable decoder is not among `pipeline all`'s
    exports, so only the full report exports and times it."""
    from ..runtime.registry import runtime_names

    names = runtime_names("decoder", default_only=True)
    return tuple(rt for rt in names if full or rt != PORTABLE)


def _decode(workspace, base: str, sizes: Sizes, threads: list[int]) -> dict:
    from ..measure.decode import DecodePlan, end_to_end, run_decode_bench

    runtimes = decode_runtimes(sizes.full)
    new_tokens = sizes.decode_new_tokens
    plan = DecodePlan(
        (base,),
        runtimes,
        tuple(threads),
        past_lens=tuple(sizes.decode_past_lens),
        repeat=sizes.repeats(8, 5),
    )
    steps = run_decode_bench(workspace, plan, base)
    return {
        "variants": [base],
        "runtimes": list(runtimes),
        "new_tokens": new_tokens,
        "steps": [r.to_dict() for r in steps],
        "end_to_end": [
            {"variant": base, **row}
            for t in threads
            for row in end_to_end(workspace, base, runtimes, t, new_tokens=new_tokens)
        ],
    }


def _family_decode(workspace, sizes: Sizes, threads: list[int]) -> list[dict]:
    """Decode steps of the attention family, baseline's among them: the family table compares
    steps measured one after the other in this phase, not baseline's from the decode section."""
    from ..measure.decode import DecodePlan, run_decode_bench

    names = tuple(workspace.sized(v) for v in sizes.family())
    plan = DecodePlan(
        names,
        HEADLINE,
        tuple(threads[:1]),
        past_lens=tuple(sizes.decode_past_lens),
        repeat=sizes.repeats(8, 5),
    )
    return [r.to_dict() for v in names for r in run_decode_bench(workspace, plan, v)]


def _sweeps(
    workspace, base: str, sizes: Sizes, bench_records: list[dict], threads: list[int], step
) -> dict:
    from ..measure import sweep

    if sizes.full:
        seq = sweep.sweep_seq(
            workspace,
            EXACT_FILES,
            repeat=10,
            seq_lens=sizes.sweep_seq_lens,
            variant=base,
        )
    else:
        seq = sweep.seq_from_bench(bench_records, threads[0], EXACT_FILES, base)
    config = sweep.sweep_config(
        sizes.config_grid or (sweep.CONFIG_GRID_FULL if sizes.full else sweep.CONFIG_GRID),
        repeat=sizes.repeats(8, 5),
        seq_len=min(256, max(seq["seq_lens"])),
        runtimes=(REFERENCE, PORTABLE) if sizes.full else (REFERENCE,),
    )
    family = None
    if sizes.full:
        step("family")
        family = sweep.sweep_family(
            workspace, [workspace.sized(v) for v in sizes.family()], seq_lens=sizes.family_seq_lens
        )
    return {"sweep_seq": seq, "sweep_config": config, "family": family}
