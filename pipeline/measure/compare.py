"""Each variant against baseline: how far the logits move, and what it does to latency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Optional

import numpy as np
import torch

from ..config import get_variant, sized_name, variant_size
from ..examples import example_input_ids
from ..runtime.registry import build, get_runtime, runtime_with
from .harness import Stats, time_interleaved


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def logit_metrics(base: np.ndarray, other: np.ndarray) -> dict:
    """Distances between two [S, V] logit arrays (float64 math)."""
    base, other = base.astype(np.float64), other.astype(np.float64)
    diff = other - base
    lp, lq = log_softmax(base), log_softmax(other)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)  # KL(p_baseline || p_variant) per position
    return {
        "max_abs_diff": float(np.abs(diff).max()),
        "rmse": float(np.sqrt((diff**2).mean())),
        "mean_abs_diff": float(np.abs(diff).mean()),
        "rel_l2_error": float(np.linalg.norm(diff) / np.linalg.norm(base)),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement_pct": float((base.argmax(-1) == other.argmax(-1)).mean() * 100),
        "positions": int(base.shape[0]),
    }


def pooled_metrics(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Metrics over every position of every example together."""
    return logit_metrics(
        np.concatenate([b for b, _ in pairs]), np.concatenate([o for _, o in pairs])
    )


def compare_variants(
    workspace,
    variants: Sequence[str],
    examples=None,
    seq_lens: Sequence[int] = (128, 1024),
    runtimes: Optional[Sequence[str]] = None,  # None: the eager model and both ORT files
    threads: int = 1,
    repeat: int = 15,
    warmup: int = 2,
    on_step: Optional[Callable[[str], None]] = None,
) -> dict:
    """Each variant's logits against baseline's on the examples, and every variant's latency in
    each runtime, all variants interleaved at each (runtime, S)."""
    runtimes = runtimes or [runtime_with(r) for r in ("reference", "portable", "fast")]
    size = variant_size(variants[0])
    base = sized_name("baseline", size)  # a checkpoint's own model, at its size
    cfg = get_variant(base).config
    cases = example_input_ids(cfg, examples)
    seq_lens = [n for n in seq_lens if n <= cfg.max_seq_len] or [cfg.max_seq_len]
    names = [base] + [v for v in variants if v != base]
    workspace.prepare([(v, get_runtime(rt).forward_flavour) for v in names for rt in runtimes])
    models = {v: workspace.model(v) for v in names}
    with torch.inference_mode():
        logits = {v: [m(ids)[0].numpy() for ids in cases] for v, m in models.items()}
    accuracy = {v: pooled_metrics(list(zip(logits[base], logits[v]))) for v in names if v != base}
    per_length = {
        v: {ids.shape[1]: logit_metrics(b, o) for ids, b, o in zip(cases, logits[base], logits[v])}
        for v in names
        if v != base
    }

    latency = _latency(
        workspace, names, runtimes, seq_lens, cfg.vocab_size, threads, repeat, warmup, on_step
    )
    rows = []
    for v in names:
        row = {"variant": v, "description": get_variant(v).description}
        row.update(accuracy.get(v, {}))
        for key, p50 in latency[v].items():
            row[f"p50_ms {key}"] = p50
            row[f"ratio {key}"] = p50 / latency[base][key]
        rows.append(row)
    return {
        "baseline": base,
        "threads": threads,
        "seq_lens": list(seq_lens),
        "runtimes": list(runtimes),
        "example_lengths": [ids.shape[1] for ids in cases],
        "rows": rows,
        "per_length": per_length,
    }


def _latency(workspace, names, runtimes, seq_lens, vocab, threads, repeat, warmup, on_step):
    """variant -> {"<runtime>@<S>": p50 ms}: at each (runtime, S) all variants take turns, so
    they are compared side by side."""
    rng = np.random.default_rng(99)
    latency: dict[str, dict] = {v: {} for v in names}
    for runtime in runtimes:
        runners = {v: build(runtime, "forward", workspace, v, threads) for v in names}
        for n in seq_lens:
            ids = rng.integers(0, vocab, (1, n), dtype=np.int64)
            times = time_interleaved(
                {v: partial(r.run, ids) for v, r in runners.items()}, warmup, repeat, 6.0
            )
            for v, t in times.items():
                latency[v][f"{runtime}@{n}"] = Stats.of(t).p50_ms
            if on_step:
                on_step(f"{runtime} S={n}")
    return latency


ACCURACY_COLUMNS = [
    ("max_abs_diff", "max abs diff"),
    ("rmse", "RMSE"),
    ("mean_abs_diff", "mean abs diff"),
    ("rel_l2_error", "rel L2"),
    ("kl_mean", "KL mean"),
    ("kl_max", "KL max"),
    ("top1_agreement_pct", "top-1 agree %"),
]


def compare_tables(result: dict) -> tuple[list[str], list[list], list[str], list[list]]:
    """(accuracy headers, rows, latency headers, rows) for text or Markdown."""
    acc_rows = [
        [r["variant"]] + [r.get(k) for k, _ in ACCURACY_COLUMNS]
        for r in result["rows"]
        if r["variant"] != result.get("baseline", "baseline")
    ]
    keys = [f"{rt}@{n}" for rt in result["runtimes"] for n in result["seq_lens"]]
    lat_headers = ["variant"] + [h for k in keys for h in (f"{k} p50 ms", "x base")]
    lat_rows = [
        [r["variant"]] + [x for k in keys for x in (r[f"p50_ms {k}"], r[f"ratio {k}"])]
        for r in result["rows"]
    ]
    return ["variant"] + [h for _, h in ACCURACY_COLUMNS], acc_rows, lat_headers, lat_rows


def quantization_accuracy(
    workspace, variant: str = "baseline", examples=None, runtime: Optional[str] = None
) -> dict:
    """An approximate runtime (int8) against fp32 eager torch of the same variant, over every
    example position (runtime: the registry's quantized one)."""
    runtime = runtime or runtime_with("quantized")
    cases = example_input_ids(get_variant(variant).config, examples)
    model = workspace.model(variant)
    runner = build(runtime, "forward", workspace, variant)
    with torch.inference_mode():
        pairs = [(model(ids)[0].numpy(), runner.run(ids.numpy())[0]) for ids in cases]
    return {"variant": variant, **pooled_metrics(pairs)}
