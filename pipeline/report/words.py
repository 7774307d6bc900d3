"""Words the report chooses by its numbers: what a variant changes, what bounds a forward, how
a quantity scales; and how a variant's name is shown."""

from __future__ import annotations

from typing import Optional

from ..config import get_variant


def potential(variant: str, seq_len: int = 1024, baseline: str = "baseline") -> str:
    """What the variant's config changes in the work, computed from it (no per-variant text)."""
    cfg, base = get_variant(variant).config, get_variant(baseline).config
    seq_len = min(seq_len, base.max_seq_len)
    flops = cfg.forward_flops(seq_len) / base.forward_flops(seq_len)
    parts = [
        f"{flops:.0%} of baseline's matmul FLOPs at S={seq_len}"
        if abs(flops - 1) > 0.005
        else "the same matmul FLOPs as baseline"
    ]
    if cfg.n_params() != base.n_params():
        parts.append(f"{cfg.n_params():,} parameters ({cfg.n_params() - base.n_params():+,})")
    if cfg.kv_cache_bytes_per_token() != base.kv_cache_bytes_per_token():
        parts.append(
            f"a KV cache of {cfg.kv_cache_bytes_per_token():,} B per token "
            f"({cfg.kv_cache_bytes_per_token() / base.kv_cache_bytes_per_token():.2g}x baseline's)"
        )
    return "; ".join(parts) + "."


def bound_text(profile: dict, gemm_gflops: float, baseline: str = "baseline") -> str:
    """Where the ORT-optimised forward's time goes at the longest length, against the causal FLOP
    count at the GEMM rate: the distance to the limit and what makes it up."""
    cfg, s = get_variant(baseline).config, profile["seq_len"]
    ops = profile["ms_per_forward"]
    attn_flops = cfg.n_layers * 2 * 2 * cfg.attention_pairs(s) * cfg.d_model
    matmul_flops = cfg.forward_flops(s) - attn_flops
    bound = lambda flops: flops / gemm_gflops / 1e6  # ms at the GEMM rate
    gemm_ms = ops.get("Gemm", 0.0) + ops.get("MatMul", 0.0)
    attn_ms = sum(v for k, v in ops.items() if "Attention" in k)
    rest = profile["total_ms"] - gemm_ms - attn_ms
    top = ", ".join(f"{k} {v:.1f} ms" for k, v in list(ops.items())[:5])
    share = bound(matmul_flops) / gemm_ms if gemm_ms else float("nan")
    at_rate = (
        f"{share:.0%} of the GEMM rate"
        if share <= 1.0
        else "faster than the GEMM rate measured in this run allows (that reference was measured low)"
    )
    return (
        f"What bounds `ort-opt` at S={s} (ONNX Runtime's profiler, {profile['threads']} thread, "
        f"{profile['total_ms']:.1f} ms of kernel time per forward: {top}): the projections, MLP and LM head "
        f"(Gemm/MatMul) take {gemm_ms:.1f} ms for {matmul_flops / 1e9:.2f} GFLOP, "
        f"{at_rate}; attention takes {attn_ms:.1f} ms for "
        f"{attn_flops / 1e9:.2f} GFLOP of causal work, {attn_ms / bound(attn_flops):.1f}x its time at the GEMM "
        f"rate; everything else (GELU, LayerNorm, residual adds, reshapes) {rest:.1f} ms. The whole forward's "
        f"FLOP bound is {bound(cfg.forward_flops(s)):.1f} ms.\n"
    )


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


SLOPE_NOISE = 0.25  # a measured log-log slope this close to the FLOPs' is their prediction


def scaling_word(slope: float, flop_slope: Optional[float] = None) -> str:
    """How latency scales with a parameter; beside the FLOP count's slope, a measured slope
    that departs from it is said to be one run's reading, not a property of the model."""
    if flop_slope is not None and abs(slope - flop_slope) <= SLOPE_NOISE:
        return "as its FLOPs predict"
    if slope < 0.15:
        word = "no measurable effect"
    elif slope < 0.8:
        word = "a sub-linear effect (it drives only part of the work)"
    elif slope < 1.2:
        word = "a roughly linear effect"
    else:
        word = "a super-linear effect"
    if flop_slope is None:
        return word
    return (
        f"{word} in this run, against {flop_slope:.2f} from its FLOPs: re-run before relying on it"
    )


def logit_word(m: dict) -> str:
    if m["top1_agreement_pct"] >= 99.9 and m["rel_l2_error"] < 1e-2:
        return "a small perturbation: the predictions do not change"
    if m["top1_agreement_pct"] >= 90:
        return "a clear change of the logits that mostly keeps the top prediction"
    if m["top1_agreement_pct"] >= 50:
        return "a large change: a sizeable share of the top predictions change"
    return "a different function: most top predictions change"


def shown(name: str) -> str:
    """A variant as the report's tables show it, without the size (the header states it):
    'ln-eps@gpt2-124m' -> 'ln-eps', 'rope@my-gpt2-1a2b/ort-opt' -> 'rope/ort-opt'."""
    variant, _, rest = name.partition("@")
    return variant + ("/" + rest.partition("/")[2] if "/" in rest else "")
