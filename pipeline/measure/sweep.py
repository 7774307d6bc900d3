"""What drives latency: input length and each config parameter, measured on both runtimes.

Length sweep: the spec's model at S = 1..S_max; a least-squares fit t(S) = a + b S + c S^2
separates fixed overhead, per-token cost and the attention's quadratic term.
Config sweep: one parameter at a time around the spec point (random weights of that shape,
exported afresh), at a fixed S; the log-log slope says how latency scales with the parameter,
next to the slope the FLOP count predicts.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from ..api import build_model
from ..config import BASE_CONFIG, get_variant
from ..runtime.registry import build, runtime_with
from ..runtime.session import OrtRunner, TorchRunner
from ..weights import make_standin_state_dict
from .harness import Stats, time_interleaved

REFERENCE, PORTABLE, FAST = map(runtime_with, ("reference", "portable", "fast"))

SEQ_LENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024)
CONFIG_GRID = {  # around the spec point (the middle value of each)
    "d_model": (128, 256, 512),
    "d_mlp": (640, 1280, 2560),
    "n_layers": (1, 3, 6),
    "n_heads": (1, 2, 4),
    "vocab_size": (256, 512, 2048),
    "max_seq_len": (512, 1024, 2048),
}
CONFIG_GRID_FULL = {
    "d_model": (64, 128, 256, 512, 768),
    "d_mlp": (320, 640, 1280, 2560, 5120),
    "n_layers": (1, 2, 3, 6, 12),
    "n_heads": (1, 2, 4, 8, 16),
    "vocab_size": (128, 256, 512, 2048, 8192),
    "max_seq_len": (256, 512, 1024, 2048, 4096),
}
LABELS = {
    "d_model": "d",
    "d_mlp": "d_u",
    "n_layers": "N_l",
    "n_heads": "N_h",
    "vocab_size": "V",
    "max_seq_len": "S_max",
}


def fit_quadratic(seq_lens: Sequence[int], ms: Sequence[float]) -> dict:
    s, t = np.asarray(seq_lens, float), np.asarray(ms, float)
    design = np.stack([np.ones_like(s), s, s**2], axis=1)
    coef, *_ = np.linalg.lstsq(design, t, rcond=None)
    pred = design @ coef
    r2 = 1 - ((t - pred) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-300)
    return {
        "a_ms": float(coef[0]),
        "b_ms_per_token": float(coef[1]),
        "c_ms_per_token2": float(coef[2]),
        "r2": float(r2),
    }


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """d log y / d log x by least squares; rounding error of an exactly flat line reads as 0."""
    slope = float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])
    return 0.0 if abs(slope) < 1e-9 else slope


def sweep_seq(
    workspace,
    runtimes: Sequence[str],
    threads: int = 1,
    seq_lens: Sequence[int] = SEQ_LENS,
    repeat: int = 10,
    warmup: int = 2,
    on_step: Optional[Callable[[str], None]] = None,
    variant: str = "baseline",
) -> dict:
    """Latency vs S of the variant in each runtime, interleaved at each S, with the fits."""
    runners = {rt: build(rt, "forward", workspace, variant, threads) for rt in runtimes}
    vocab = get_variant(variant).config.vocab_size
    rng = np.random.default_rng(5)
    p50: dict[str, list[float]] = {rt: [] for rt in runtimes}
    for n in seq_lens:
        ids = rng.integers(0, vocab, (1, n), dtype=np.int64)
        times = time_interleaved(
            {rt: partial(r.run, ids) for rt, r in runners.items()}, warmup, repeat, 3.0
        )
        for rt, t in times.items():
            p50[rt].append(Stats.of(t).p50_ms)
        if on_step:
            on_step(f"S={n}")
    return seq_result(threads, seq_lens, p50)


def seq_result(threads: int, seq_lens: Sequence[int], p50_ms: dict[str, list[float]]) -> dict:
    """A length sweep's record: p50 per runtime at each S, and each runtime's quadratic fit."""
    return {
        "threads": threads,
        "seq_lens": list(seq_lens),
        "p50_ms": p50_ms,
        "fits": {rt: fit_quadratic(seq_lens, ms) for rt, ms in p50_ms.items()},
    }


def seq_from_bench(
    records: Sequence[dict], threads: int, runtimes: Sequence[str], variant: str = "baseline"
) -> dict:
    """The length sweep read off bench records (as dicts; one variant, one thread count) instead
    of measured again: fewer lengths, the same fit."""
    by = {
        (r["runtime"], r["seq_len"]): r["p50_ms"]
        for r in records
        if r["threads"] == threads and r["variant"] == variant
    }
    seq_lens = sorted({n for _, n in by})
    return seq_result(threads, seq_lens, {rt: [by[(rt, n)] for n in seq_lens] for rt in runtimes})


def within_limit(seq_lens: Sequence[int], limit: int) -> tuple[int, ...]:
    """The lengths up to `limit`, those past it replaced by the limit itself."""
    kept = tuple(n for n in seq_lens if n < limit)
    return kept + (limit,) if len(kept) < len(seq_lens) else kept


def within_context(seq_lens: Sequence[int], variant: str) -> tuple[int, ...]:
    """The lengths the variant's model can take (a checkpoint's context may be under 1024)."""
    return within_limit(seq_lens, get_variant(variant).config.max_seq_len)


def _attention_family() -> tuple[str, ...]:
    """baseline and every variant that changes how attention is done (positions, key/value
    heads, window): read off the registry, so a new such variant joins by itself."""
    from ..config import VARIANTS

    base = VARIANTS["baseline"].config
    fields = ("positions", "n_kv_heads", "attn_window")
    return ("baseline",) + tuple(
        n
        for n, v in VARIANTS.items()
        if any(getattr(v.config, f) != getattr(base, f) for f in fields)
    )


FAMILY = _attention_family()
FAMILY_SEQ_LENS = (64, 128, 256, 384, 512, 640, 768, 896, 1024)


def sweep_family(
    workspace,
    variants: Sequence[str] = FAMILY,
    runtimes: Sequence[str] = (REFERENCE, FAST),
    seq_lens: Sequence[int] = FAMILY_SEQ_LENS,
    threads: int = 1,
    repeat: int = 6,
    warmup: int = 2,
    on_step: Optional[Callable[[str], None]] = None,
) -> dict:
    """Latency vs S of the attention family, every variant and runtime interleaved per S. Each
    curve gets t(S) = a + b S + c S^2 over all lengths, and a windowed variant also over S >= W,
    where its attention work is linear: the quadratic term should vanish there."""
    runners = {
        (v, rt): build(rt, "forward", workspace, v, threads) for v in variants for rt in runtimes
    }
    rng = np.random.default_rng(7)
    vocab = min(get_variant(v).config.vocab_size for v in variants)
    p50: dict[str, list[float]] = {f"{v}/{rt}": [] for v, rt in runners}
    for n in seq_lens:
        ids = rng.integers(0, vocab, (1, n), dtype=np.int64)
        times = time_interleaved(
            {f"{v}/{rt}": partial(r.run, ids) for (v, rt), r in runners.items()},
            warmup,
            repeat,
            6.0,
        )
        for key, t in times.items():
            p50[key].append(Stats.of(t).p50_ms)
        if on_step:
            on_step(f"S={n}")
    fits = {}
    for v, rt in runners:
        key, window = f"{v}/{rt}", get_variant(v).config.attn_window
        fits[key] = {"all": fit_quadratic(seq_lens, p50[key])}
        past = [(n, t) for n, t in zip(seq_lens, p50[key]) if window and n >= window]
        if len(past) >= 3:
            fits[key]["from_window"] = fit_quadratic(*zip(*past))
    return {"threads": threads, "seq_lens": list(seq_lens), "p50_ms": p50, "fits": fits}


def _ort_runner_for(model, threads: int, tmp: Path) -> OrtRunner:
    import onnx

    from ..export.identity import DEFAULT_OPSET
    from ..export.trace import trace_to_onnx

    path = tmp / f"sweep_{abs(hash(model.config))}.onnx"
    onnx.save_model(trace_to_onnx(model, DEFAULT_OPSET), str(path))
    return OrtRunner(path, threads)


def sweep_config(
    grid: dict[str, Sequence[int]] = CONFIG_GRID,
    seq_len: int = 256,
    threads: int = 1,
    repeat: int = 8,
    warmup: int = 2,
    on_step: Optional[Callable[[str], None]] = None,
    runtimes: Sequence[str] = (REFERENCE, PORTABLE),
) -> dict:
    """Latency of the eager reference and ORT (portable export) for each one-parameter change
    of the config. Each ORT point costs a fresh export (seconds); runtimes=(REFERENCE,) skips
    them."""
    rng = np.random.default_rng(6)
    results: dict[str, dict] = {}
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for param, values in grid.items():
            rows = []
            for value in values:
                cfg = dataclasses.replace(BASE_CONFIG, **{param: value})
                if cfg not in cache:
                    model = build_model(cfg, make_standin_state_dict(cfg, seed=1))
                    ids = rng.integers(
                        0, cfg.vocab_size, (1, min(seq_len, cfg.max_seq_len)), dtype=np.int64
                    )
                    make = {
                        REFERENCE: partial(TorchRunner, model, threads),
                        PORTABLE: partial(_ort_runner_for, model, threads, Path(tmp)),
                    }
                    runners = {rt: make[rt]() for rt in runtimes}
                    times = time_interleaved(
                        {rt: partial(r.run, ids) for rt, r in runners.items()},
                        warmup,
                        repeat,
                        3.0,
                    )
                    cache[cfg] = {rt: Stats.of(t).p50_ms for rt, t in times.items()}
                rows.append(
                    {
                        "value": value,
                        "p50_ms": cache[cfg],
                        "gflop": cfg.forward_flops(seq_len) / 1e9,
                    }
                )
                if on_step:
                    on_step(f"{param}={value}")
            xs = [r["value"] for r in rows]
            results[param] = {
                "rows": rows,
                "spec_value": getattr(BASE_CONFIG, param),
                "slopes": {
                    rt: loglog_slope(xs, [r["p50_ms"][rt] for r in rows]) for rt in runtimes
                },
                "flop_slope": loglog_slope(xs, [r["gflop"] for r in rows]),
            }
    return {"seq_len": seq_len, "threads": threads, "runtimes": list(runtimes), "params": results}


def sweep_tables(result: dict) -> list[tuple[list[str], list[list]]]:
    seq, config = result["seq"], result["config"]
    return [
        (
            ["runtime", "a ms", "b ms/token", "c ms/token^2", "R^2"],
            [
                [rt, f["a_ms"], f["b_ms_per_token"], f["c_ms_per_token2"], f["r2"]]
                for rt, f in seq["fits"].items()
            ],
        ),
        (
            ["param", "values", f"{REFERENCE} slope", f"{PORTABLE} slope", "FLOP slope"],
            [
                [
                    LABELS[p],
                    ",".join(str(x["value"]) for x in r["rows"]),
                    r["slopes"].get(REFERENCE),
                    r["slopes"].get(PORTABLE),
                    r["flop_slope"],
                ]
                for p, r in config["params"].items()
            ],
        ),
    ]


def family_table(result: dict) -> tuple[list[str], list[list]]:
    s_max = result["seq_lens"][-1]
    rows = []
    for key, f in result["fits"].items():
        for span, fit in f.items():
            rows.append(
                [
                    key,
                    "all S" if span == "all" else "S >= W",
                    fit["a_ms"],
                    fit["b_ms_per_token"] * 1e3,
                    fit["c_ms_per_token2"] * 1e6,
                    fit["r2"],
                    result["p50_ms"][key][-1],
                    fit["c_ms_per_token2"] * s_max**2,
                ]
            )
    return (
        [
            "variant/runtime",
            "fit over",
            "a ms",
            "b us/token",
            "c ns/token^2",
            "R^2",
            f"p50 ms at S={s_max}",
            "c S^2 ms there",
        ],
        rows,
    )
