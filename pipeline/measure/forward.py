"""Forward-pass latency of every runtime side by side.

For each (variant, threads, seq_len) every runtime is warmed up, then the runtimes take turns,
one forward each (the harness's interleaved loop), so that drift on a shared machine hits all of
them alike. Timings are per-forward wall-clock around the runtime call, inputs prepared before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import get_variant
from ..runtime.registry import build, get_runtime, runtime_with
from .harness import Stats, gemm_gflops, machine, time_interleaved
from .stability import remeasured, unstable_reasons


@dataclass
class Record:
    runtime: str
    variant: str
    threads: int
    seq_len: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    gflops: float  # achieved, from the config's FLOP count and p50
    batch: int = 1
    # a 1024^3 fp32 matmul in the runtime's own GEMM library at this thread count, same run
    gemm_gflops: float = float("nan")
    # max |logits - eager torch's| on this point's input, checked before the timing
    max_abs_diff: float = float("nan")
    compile_s: Optional[float] = None  # a compiling runtime's one-off compile time, never timed
    unstable: list = field(default_factory=list)  # why the point is not trusted (stability.py)
    attempts: int = 1  # measurements of the point, re-measurements of an unstable one included

    @property
    def peak_share(self) -> float:
        """The forward's GFLOP/s as a share of its library's GEMM rate: how far from the limit."""
        return self.gflops / self.gemm_gflops

    @property
    def stable(self) -> bool:
        return not self.unstable

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.variant}/{self.threads}t/S={self.seq_len}"

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_share": self.peak_share, "stable": self.stable}

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        derived = ("peak_share", "stable")
        return cls(**{k: v for k, v in data.items() if k not in derived})


def check_logits(
    runners: dict, ids: np.ndarray, reference, variant: str, tolerance: float = 1e-4
) -> dict:
    """max |diff| of every runner's logits against the reference's on ids; an exact runtime
    outside the tolerance is an error, before anything is timed (approximate ones are reported)."""
    from ..errors import PipelineError

    want = reference.run(ids).astype(np.float64)
    bound = tolerance * max(1.0, float(np.abs(want).max()))
    diffs = {}
    for name, runner in runners.items():
        got = np.asarray(runner.run(ids), dtype=np.float64)
        diffs[name] = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not np.isfinite(diffs[name]) or (get_runtime(name).exact and diffs[name] > bound):
            raise PipelineError(
                f"{name} computes other logits than eager torch for {variant} at S={ids.shape[1]}: "
                f"max |diff| {diffs[name]:.3g} > {bound:.3g}; not timing it"
            )
    return diffs


def summarize(
    runtime: str,
    variant: str,
    threads: int,
    seq_len: int,
    times_ms: Sequence[float],
    batch: int = 1,
    gemm_gflops: float = float("nan"),
    max_abs_diff: float = float("nan"),
) -> Record:
    stats = Stats.of(times_ms)
    flops = batch * get_variant(variant).config.forward_flops(seq_len)
    return Record(
        runtime,
        variant,
        threads,
        seq_len,
        **stats.to_dict(),
        gflops=flops / (stats.p50_ms * 1e-3) / 1e9,
        batch=batch,
        gemm_gflops=gemm_gflops,
        max_abs_diff=max_abs_diff,
    )


def bench_inputs(
    seq_lens: Iterable[int], vocab_size: int = 512, seed: int = 1234, batch: int = 1
) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.integers(0, vocab_size, (batch, n), dtype=np.int64) for n in seq_lens}


def speedups(records: list[Record], baseline: Optional[str] = None) -> list[dict]:
    """baseline p50 / runtime p50 for every other runtime at each (variant, threads, seq_len)
    (baseline: the reference runtime)."""
    baseline = baseline or runtime_with("reference")
    by_key = {(r.runtime, r.variant, r.threads, r.seq_len): r for r in records}
    rows = []
    for r in records:
        ref = by_key.get((baseline, r.variant, r.threads, r.seq_len))
        if r.runtime != baseline and ref is not None:
            rows.append(
                {
                    "runtime": r.runtime,
                    "variant": r.variant,
                    "threads": r.threads,
                    "seq_len": r.seq_len,
                    f"{baseline}_p50_ms": ref.p50_ms,
                    "p50_ms": r.p50_ms,
                    "speedup": ref.p50_ms / r.p50_ms,
                }
            )
    return rows


@dataclass(frozen=True)
class ForwardPlan:
    """What a forward benchmark times: every (runtime, variant, threads, seq_len), the runtimes
    of one point interleaved, `repeat` rounds after `warmup` (fewer once max_seconds passed)."""

    runtimes: tuple[str, ...]
    variants: tuple[str, ...]
    threads: tuple[int, ...]
    seq_lens: tuple[int, ...]
    warmup: int = 3
    repeat: int = 20
    max_seconds: Optional[float] = 4.0
    batch: int = 1

    def with_runtimes(self, runtimes) -> ForwardPlan:
        return dataclasses.replace(self, runtimes=tuple(runtimes))


def run_bench(
    workspace, plan: ForwardPlan, on_point: Optional[Callable[[list[Record]], None]] = None
) -> list[Record]:
    """Latency records for every point of the plan."""
    cfg = get_variant(plan.variants[0]).config  # one size per call
    workspace.prepare(
        [(v, get_runtime(rt).forward_flavour) for v in plan.variants for rt in plan.runtimes]
    )
    inputs = bench_inputs(plan.seq_lens, cfg.vocab_size, batch=plan.batch)
    records: list[Record] = []
    for variant in plan.variants:
        for n_threads in plan.threads:
            runners = {
                rt: build(rt, "forward", workspace, variant, n_threads) for rt in plan.runtimes
            }
            name = runtime_with("reference")
            reference = runners.get(name) or build(name, "forward", workspace, variant, n_threads)
            gemm = {
                rt: gemm_gflops(get_runtime(rt).gemm_library, n_threads) for rt in plan.runtimes
            }
            measure = partial(_measure_point, runners, reference, variant, n_threads, gemm, plan)
            group = []
            for seq_len in plan.seq_lens:
                point = measure(inputs[seq_len])
                group.extend(point)
                if on_point:
                    on_point(point)
            records.extend(remeasured(group, lambda s, m=measure: m(inputs[s])))
    for i, why in unstable_reasons(records).items():  # across thread counts too, now all ran
        records[i].unstable = why
    return records


def _measure_point(runners, reference, variant, n_threads, gemm, plan, ids) -> list[Record]:
    """One (variant, threads, S): the logits checked, then every runtime timed in turns."""
    diffs = check_logits(runners, ids, reference, variant)
    times = time_interleaved(
        {rt: partial(r.run, ids) for rt, r in runners.items()},
        plan.warmup,
        plan.repeat,
        plan.max_seconds,
    )
    seq_len = ids.shape[1]
    point = [
        summarize(rt, variant, n_threads, seq_len, t, plan.batch, gemm[rt], diffs[rt])
        for rt, t in times.items()
    ]
    for record in point:
        record.compile_s = getattr(runners[record.runtime], "compile_s", None)
    return point


def bench_forward(
    workspace, plan: ForwardPlan, on_point: Optional[Callable[[list[Record]], None]] = None
) -> tuple[list, dict]:
    """`pipeline bench`: (records, the JSON: machine, records, speed-ups, and the runtimes not
    installed). A runtime whose package is missing is skipped and reported as not installed,
    never as a failure."""
    missing = {rt: get_runtime(rt).missing() for rt in plan.runtimes}
    if all(missing.values()):
        from ..errors import PipelineError

        raise PipelineError(
            "; ".join(
                f"{rt}: not installed (no package {pkg!r}); skipped" for rt, pkg in missing.items()
            )
        )
    from .stability import LoadProbe

    probe = LoadProbe.start()
    records = run_bench(
        workspace, plan.with_runtimes(rt for rt in plan.runtimes if not missing[rt]), on_point
    )
    data = bench_json(records, probe.stop())
    data["not_installed"] = [rt for rt, pkg in missing.items() if pkg]
    return records, data


def bench_json(records: list[Record], load: Optional[dict] = None) -> dict:
    """The bench's JSON: the machine (its GEMM rates measured again after the timed work, to see
    whether they held), the records and how many of them are unstable."""
    from .harness import gemm_again
    from .stability import gemm_problems, stability_summary

    threads = sorted({r.threads for r in records})
    info = machine(threads)
    after = gemm_again(info["gemm_gflops"])
    return {
        "machine": {**info, "gemm_gflops_after": after},
        "records": [r.to_dict() for r in records],
        "speedups_vs_torch": speedups(records),
        "stability": stability_summary(
            (f"{r.label}: {', '.join(r.unstable)}" for r in records if r.unstable),
            len(records),
            load,
            gemm_problems(info["gemm_gflops"], after),
        ),
    }


def bench_table(records: list[Record]) -> tuple[list[str], list[tuple]]:
    """(headers, rows) of the bench's main table: a share above its GEMM reference is shown as
    the reference's fault, never as a share; the speed-up column only when the reference ran."""
    reference = runtime_with("reference")
    sp = {
        (r["runtime"], r["variant"], r["threads"], r["seq_len"]): r["speedup"]
        for r in speedups(records)
    }

    def share(r: Record) -> str:
        if not get_runtime(r.runtime).exact:
            return "-"  # int8 work is not the fp32 work the GEMM rate bounds
        return f"{r.peak_share:.0%}" if r.peak_share <= 1.0 else "above ref"

    with_speedup = any(r.runtime == reference for r in records)
    rows = [
        (r.variant, r.threads, r.seq_len, r.runtime, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms,
         r.std_ms, r.runs, r.gflops, share(r))
        + ((sp.get((r.runtime, r.variant, r.threads, r.seq_len)),) if with_speedup else ())
        + (r.max_abs_diff, "yes" if r.stable else "no (!)")
        for r in sorted(records, key=lambda r: (r.variant, r.threads, r.seq_len))
    ]  # fmt: skip
    headers = ["variant", "threads", "seq", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms",
               "std ms", "runs", "GFLOP/s", "of GEMM"]  # fmt: skip
    headers += [f"{reference}/this"] * with_speedup + [f"max |diff| vs {reference}", "stable"]
    return headers, rows


CSV_FIELDS = [
    "runtime",
    "variant",
    "threads",
    "batch",
    "seq_len",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "runs",
    "gflops",
    "gemm_gflops",
    "peak_share",
    "max_abs_diff",
    "compile_s",
    "attempts",
    "stable",
]


def records_csv(records: list[Record]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow(r.to_dict())
    return buf.getvalue()


def profile_ops(
    path, seq_len: int = 1024, threads: int = 1, runs: int = 5, vocab_size: int = 512
) -> dict:
    """Kernel time per op type of one forward (mean of `runs` after a warm-up), from ONNX Runtime's
    own profiler: where the time goes, to set beside the FLOP bound."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(0, vocab_size, (1, seq_len), dtype=np.int64)
        for _ in range(runs + 1):  # the first is the warm-up, left out below
            session.run(None, {"input_ids": ids})
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm_end = model_runs[0]["ts"] + model_runs[0]["dur"]
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if (
            e.get("cat") == "Node"
            and e.get("name", "").endswith("_kernel_time")
            and e["ts"] >= warm_end
        ):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {
        "seq_len": seq_len,
        "threads": threads,
        "ms_per_forward": {op: us / runs / 1e3 for op, us in per_op.most_common()},
        "total_ms": total / runs / 1e3,
    }
