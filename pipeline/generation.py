"""Text generation with a KV cache, in batches, on any runtime that runs the decoder graph.

Prompts of different lengths are left-padded: an attention mask hides the padding and positions
count real tokens only, so each row is generated exactly as it would be alone. Every runtime is a
decoder (runtime/decoders.py) with the same two calls (prefill the prompts, then one token per
row per step), and the token choice (greedy or sampled) is shared, so runtimes can only differ in
their logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .beam_search import Beams, run_beam_search
from .config import ModelConfig, get_variant
from .errors import PipelineError
from .generation_rules import Rules, ends_row, process
from .resources import check_memory
from .runtime.decoders import pad_left, positions_from_mask  # noqa: F401 (pad_left: its API)
from .runtime.registry import build, resolve_runtimes
from .workspace import Workspace


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    seed: Optional[int] = None

    def check(self) -> Sampling:
        if self.greedy:
            return self
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise PipelineError(
                f"--temperature must be a finite number > 0 when sampling, got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise PipelineError(f"--top-k must be >= 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise PipelineError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self


def choose_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """logits [B, V] -> next token per row."""
    if sampling.greedy:
        return logits.argmax(-1).astype(np.int64)
    # the maximum subtracted first: a tiny temperature (1e-310) then sends the others to -inf
    # and keeps the top at 0, instead of inf - inf = nan
    x = logits.astype(np.float64)
    x = (x - x.max(-1, keepdims=True)) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < x.shape[-1]:
        kth = np.partition(x, -sampling.top_k, axis=-1)[:, -sampling.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, -1)
        keep_sorted = (
            np.cumsum(sorted_p, -1) - sorted_p < sampling.top_p
        )  # the smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)


def check_prompts(
    prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: ModelConfig
) -> list[list[int]]:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, np.integer))
        or max_new_tokens < 1
    ):
        raise PipelineError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not prompts:
        raise PipelineError("no prompt given: pass at least one --ids")
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            raise PipelineError(f"prompt {i} is empty: every prompt needs at least one token")
        bad = next((t for t in p if not 0 <= t < cfg.vocab_size), None)
        if bad is not None:
            raise PipelineError(f"prompt {i}: token id {bad} is outside [0, {cfg.vocab_size - 1}]")
        out.append(p)
    longest = max(len(p) for p in out)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise PipelineError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens = {longest + max_new_tokens} "
            f"positions, more than the model's {cfg.max_seq_len}"
        )
    check_memory(
        generation_bytes(cfg, len(out), longest, max_new_tokens),
        f"generating {len(out)} row(s) of up to {longest + max_new_tokens} positions",
        "fewer or shorter prompts (a batch's cache and prompt logits grow with both)",
    )
    return out


def generation_bytes(cfg: ModelConfig, batch: int, prompt: int, new_tokens: int) -> int:
    """A lower bound on a generation's memory: the caches at full length (past and present), the
    prompt's logits for every row and position, and the prompt's forward activations."""
    positions = prompt + new_tokens
    return (
        cfg.kv_cache_bytes(positions, batch)
        + batch * prompt * cfg.vocab_size * 4
        + cfg.forward_peak_bytes(prompt, batch)
    )


@dataclass
class GenerationResult:
    variant: str
    runtime: str
    sequences: list  # prompt + new tokens, per row
    prompt_tokens: list
    new_tokens: int
    ttft_ms: float  # prompt in, first new token out
    tokens_per_s: float  # new tokens of all rows after the first, per second of decoding
    step_ms: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("step_ms")
        return d


def finite_logits(logits: np.ndarray, runtime: str, positions) -> np.ndarray:
    """logits [B, V] as they are, or an error naming the runtime and the first bad row's position:
    a NaN would otherwise become token 0 (greedy) or a sampling failure."""
    bad = ~np.isfinite(logits).all(axis=-1)
    if bad.any():
        row = int(np.argmax(bad))
        raise PipelineError(
            f"{runtime or 'the runtime'} returned non-finite logits at position "
            f"{int(np.asarray(positions).reshape(-1)[row])} (row {row}): the weights overflow "
            "float32 somewhere in the model"
        )
    return logits


def run_decoder(
    decoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    sampling: Sampling,
    on_tokens: Optional[Callable[[int, np.ndarray], None]] = None,
    runtime: str = "",
    rules: Rules = Rules(),
) -> tuple[list[list[int]], float, list]:
    """The shared loop: prefill, then one token per row per step, the rules (generation_rules)
    applied before each choice; a row that ends is fed on (its output unused) until every row has
    ended. Returns the new tokens per row, the time to the first token (s) and each later step's
    time (s)."""
    rng = np.random.default_rng(sampling.seed)
    ids, mask = pad_left(prompts)
    if hasattr(decoder, "reserve"):  # a cache sized for this generation, not the whole context
        decoder.reserve(ids.shape[1] + max_new_tokens)
    positions = positions_from_mask(mask)
    new: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)

    def choose(logits: np.ndarray, where) -> np.ndarray:
        logits = finite_logits(logits, runtime, where)
        sequences = [p + n for p, n in zip(prompts, new)]
        tokens = choose_tokens(
            process(logits, sequences, [len(n) for n in new], rules), sampling, rng
        )
        for row, token in enumerate(tokens.tolist()):
            if not ended[row]:
                new[row].append(token)
                ended[row] = ends_row(new[row], rules)
        return tokens

    start = time.perf_counter()
    tokens = choose(decoder.prefill(ids, mask, positions), positions[:, -1])
    ttft = time.perf_counter() - start
    if on_tokens:
        on_tokens(0, tokens)
    next_pos = positions[:, -1] + 1
    steps = []
    for i in range(1, max_new_tokens):
        if all(ended):
            break
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
        t0 = time.perf_counter()
        tokens = choose(decoder.step(tokens, mask, next_pos), next_pos)
        steps.append(time.perf_counter() - t0)
        next_pos = next_pos + 1
        if on_tokens:
            on_tokens(i, np.where(ended, -1, tokens) if any(ended) else tokens)
    return new, ttft, steps


def generate(
    variant: str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    runtime: str = "ort-opt",
    sampling: Sampling = Sampling(),
    weights=None,
    out_dir="exported",
    threads: Optional[int] = None,
    on_tokens: Optional[Callable[[int, np.ndarray], None]] = None,
    workspace: Optional[Workspace] = None,
    rules: Rules = Rules(),
    beams: Optional[Beams] = None,
) -> GenerationResult:
    """Generate up to max_new_tokens tokens after each prompt (a row ends earlier at an end-of-text
    id or a stop string, generation_rules); returns prompt + new tokens per row.
    runtime: any runtime of the registry that runs the decoder graph."""
    cfg = get_variant(variant).config
    prompts = check_prompts(prompts, max_new_tokens, cfg)
    sampling = sampling.check()
    if sampling.top_k is not None and sampling.top_k > cfg.vocab_size:
        raise PipelineError(
            f"--top-k {sampling.top_k} is more than the vocabulary's {cfg.vocab_size} tokens"
        )
    workspace = workspace or Workspace(out_dir, weights)
    resolve_runtimes(runtime, "decoder")
    decoder = build(runtime, "decoder", workspace, variant, threads)
    rules = rules.check()
    beams = (beams or Beams()).check()
    if beams.num_beams > 1 and not sampling.greedy:
        raise PipelineError("--num-beams searches the most likely text: it cannot be combined "
                            "with --temperature, --top-k or --top-p")  # fmt: skip
    if beams.num_beams > 1 and hasattr(decoder, "generate"):
        new, ttft, steps = decoder.generate(prompts, max_new_tokens, sampling, None, rules, beams)
    elif beams.num_beams > 1:
        new, ttft, steps = run_beam_search(decoder, prompts, max_new_tokens, beams, rules)
    elif hasattr(decoder, "generate"):  # onnxruntime-genai runs its own loop
        new, ttft, steps = decoder.generate(prompts, max_new_tokens, sampling, on_tokens, rules)
    else:
        new, ttft, steps = run_decoder(
            decoder, prompts, max_new_tokens, sampling, on_tokens, runtime, rules
        )
    decode_s = sum(steps)
    rate = len(prompts) * len(steps) / decode_s if decode_s > 0 else float("nan")
    return GenerationResult(
        variant,
        runtime,
        [p + n for p, n in zip(prompts, new)],
        [len(p) for p in prompts],
        max(len(n) for n in new),  # genai ends a row at its end-of-sequence id
        ttft * 1e3,
        rate,
        [s * 1e3 for s in steps],
    )
