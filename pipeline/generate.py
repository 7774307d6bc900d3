"""Text generation with a KV cache, in batches, on torch, ONNX Runtime or onnxruntime-genai.

Prompts of different lengths are left-padded: an attention mask hides the padding and positions
count real tokens only, so each row is generated exactly as it would be alone. Every runtime is a
Decoder with the same two calls (prefill the prompts, then one token per row per step), and the
token choice (greedy or sampled) is shared, so runtimes can only differ in their logits.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .config import ModelConfig, get_variant
from .errors import PipelineError

GENERATE_RUNTIMES = ("torch", "ort", "ort-opt", "genai")


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    seed: Optional[int] = None

    def check(self) -> "Sampling":
        if self.greedy:
            return self
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise PipelineError(f"--temperature must be a finite number > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise PipelineError(f"--top-k must be >= 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise PipelineError(f"--top-p must be in (0, 1], got {self.top_p}")
        return self


def choose_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """logits [B, V] -> next token per row."""
    if sampling.greedy:
        return logits.argmax(-1).astype(np.int64)
    x = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < x.shape[-1]:
        kth = np.partition(x, -sampling.top_k, axis=-1)[:, -sampling.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, -1)
        keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < sampling.top_p  # the smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)


def pad_left(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids [B, L] (pad id 0, never attended) and the attention mask [B, L]."""
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position of each token counting real tokens only (padding gets 0; it is never attended)."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)


def check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, cfg: ModelConfig) -> list[list[int]]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
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
        raise PipelineError(f"prompt of {longest} tokens + {max_new_tokens} new tokens = {longest + max_new_tokens} "
                            f"positions, more than the model's {cfg.max_seq_len}")
    return out


# -- decoders: prefill(ids, mask, positions) -> last logits [B, V]; step(tokens [B], mask, positions) -> [B, V]
class TorchDecoder:
    def __init__(self, model, threads: Optional[int] = None):
        import torch

        self.model, self.torch, self.threads = model, torch, threads
        self.past = None

    def _run(self, ids, mask, positions):
        torch = self.torch
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            logits, self.past = self.model(torch.from_numpy(ids), self.past, torch.from_numpy(mask),
                                           torch.from_numpy(positions), use_cache=True)
        return logits[:, -1].numpy()

    def prefill(self, ids, mask, positions):
        self.past = None
        return self._run(ids, mask, positions)

    def step(self, tokens, mask, positions):
        return self._run(tokens[:, None], mask, positions[:, None])


class TorchRecomputeDecoder(TorchDecoder):
    """The naive loop without a cache: every step runs the whole sequence again (for comparison)."""

    def prefill(self, ids, mask, positions):
        self.ids, self.positions = ids, positions
        self.past = None
        out = self._run(ids, mask, positions)
        self.past = None
        return out

    def step(self, tokens, mask, positions):
        self.ids = np.concatenate([self.ids, tokens[:, None]], 1)
        self.positions = np.concatenate([self.positions, positions[:, None]], 1)
        out = self._run(self.ids, mask, self.positions)
        self.past = None
        return out


class OrtDecoder:
    """The decoder graph in ONNX Runtime, the cache in preallocated buffers bound by IO binding.

    Per layer and for key and value there are two flat buffers of the largest cache size. A step
    reads its past from the first B*H*P*h floats of one (a contiguous [B, H, P, h] view) and ORT
    writes the present, [B, H, P+S, h], into the other; the two then swap. Nothing is allocated
    or concatenated in numpy per step."""

    def __init__(self, path: Path, cfg: ModelConfig, threads: Optional[int] = None):
        from .export.io_spec import past_names, present_names
        from .runtime.session import make_session

        # a decode loop calls back to back in under a millisecond: waking sleeping workers for each
        # call cost 2-thread steps up to 1.6x here, so they spin (as onnxruntime-genai's do)
        self.session = make_session(path, threads, spinning=True)
        self.cfg = cfg
        self.past_names, self.present_names = past_names(cfg), present_names(cfg)

    def _allocate(self, batch: int, prompt_len: int):
        cfg = self.cfg
        size = batch * cfg.kv_heads * cfg.max_seq_len * cfg.head_dim
        self.buffers = [[np.empty(size, np.float32) for _ in self.past_names] for _ in range(2)]
        self.logits = np.empty(batch * prompt_len * cfg.vocab_size, np.float32)
        self.current = 0
        self.past_len = 0

    def _run(self, ids, mask, positions):
        b, s = ids.shape
        cfg = self.cfg
        binding = self.session.io_binding()
        for name, arr in (("input_ids", ids), ("attention_mask", mask), ("position_ids", positions)):
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        past_shape = [b, cfg.kv_heads, self.past_len, cfg.head_dim]
        present_shape = [b, cfg.kv_heads, self.past_len + s, cfg.head_dim]
        reads, writes = self.buffers[self.current], self.buffers[1 - self.current]
        for name, buf in zip(self.past_names, reads):
            binding.bind_input(name, "cpu", 0, np.float32, past_shape, buf.ctypes.data)
        for name, buf in zip(self.present_names, writes):
            binding.bind_output(name, "cpu", 0, np.float32, present_shape, buf.ctypes.data)
        logits = self.logits[: b * s * cfg.vocab_size].reshape(b, s, cfg.vocab_size)
        binding.bind_output("logits", "cpu", 0, np.float32, [b, s, cfg.vocab_size], logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        self.current, self.past_len = 1 - self.current, self.past_len + s
        return logits[:, -1].copy()

    def prefill(self, ids, mask, positions):
        self._allocate(*ids.shape)
        return self._run(ids, mask, positions)

    def step(self, tokens, mask, positions):
        return self._run(tokens[:, None], mask, positions[:, None])


def teacher_forced_logits(decoder, ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """Logits [B, S - prompt_len + 1, V] at positions prompt_len-1 .. S-1: the prompt in one call,
    then the given tokens one per call, as generation feeds them."""
    mask = np.ones_like(ids[:, :prompt_len])
    out = [decoder.prefill(ids[:, :prompt_len], mask, positions_from_mask(mask))]
    for p in range(prompt_len, ids.shape[1]):
        mask = np.ones_like(ids[:, : p + 1])
        out.append(decoder.step(ids[:, p], mask, np.full(ids.shape[0], p)))
    return np.stack(out, axis=1)


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


def run_decoder(decoder, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling,
                on_tokens: Optional[Callable[[int, np.ndarray], None]] = None) -> tuple[list[list[int]], float, list]:
    """The shared loop: prefill, then one token per row per step. Returns the new tokens per row,
    the time to the first token (s) and each later step's time (s)."""
    rng = np.random.default_rng(sampling.seed)
    ids, mask = pad_left(prompts)
    positions = positions_from_mask(mask)
    start = time.perf_counter()
    tokens = choose_tokens(decoder.prefill(ids, mask, positions), sampling, rng)
    ttft = time.perf_counter() - start
    new = [tokens]
    if on_tokens:
        on_tokens(0, tokens)
    next_pos = positions[:, -1] + 1
    steps = []
    for i in range(1, max_new_tokens):
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
        t0 = time.perf_counter()
        tokens = choose_tokens(decoder.step(tokens, mask, next_pos), sampling, rng)
        steps.append(time.perf_counter() - t0)
        next_pos = next_pos + 1
        new.append(tokens)
        if on_tokens:
            on_tokens(i, tokens)
    return np.stack(new, 1).tolist(), ttft, steps


def make_decoder(runtime: str, variant: str, state_dict: dict, weights: Path, out_dir: Path,
                 threads: Optional[int] = None):
    from .api import load_model
    from .export import ensure_export

    cfg = get_variant(variant).config
    if runtime == "torch":
        return TorchDecoder(load_model(variant, state_dict=state_dict), threads)
    if runtime == "torch-recompute":
        return TorchRecomputeDecoder(load_model(variant, state_dict=state_dict), threads)
    if runtime in ("ort", "ort-opt"):
        flavour = "decoder" if runtime == "ort" else "decoder-optimized"
        return OrtDecoder(ensure_export(variant, weights, out_dir, state_dict, flavour), cfg, threads)
    if runtime == "genai":
        from .runtime.genai import GenaiDecoder, ensure_genai_folder

        return GenaiDecoder(ensure_genai_folder(variant, weights, out_dir, state_dict, threads), cfg, threads)
    raise PipelineError(f"unknown runtime {runtime!r}; choose {', '.join(GENERATE_RUNTIMES)}")


def generate(variant: str, prompts: Sequence[Sequence[int]], max_new_tokens: int, runtime: str = "ort-opt",
             sampling: Sampling = Sampling(), weights=None, out_dir="exported", threads: Optional[int] = None,
             on_tokens: Optional[Callable[[int, np.ndarray], None]] = None, state_dict=None) -> GenerationResult:
    """Generate max_new_tokens tokens after each prompt; returns prompt + new tokens per row."""
    from .weights import load_state_dict, weights_path

    cfg = get_variant(variant).config
    prompts = check_prompts(prompts, max_new_tokens, cfg)
    sampling = sampling.check()
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg) if state_dict is None else state_dict
    decoder = make_decoder(runtime, variant, state_dict, weights, Path(out_dir), threads)
    if hasattr(decoder, "generate"):  # onnxruntime-genai runs its own loop
        new, ttft, steps = decoder.generate(prompts, max_new_tokens, sampling, on_tokens)
    else:
        new, ttft, steps = run_decoder(decoder, prompts, max_new_tokens, sampling, on_tokens)
    decode_s = sum(steps)
    rate = len(prompts) * len(steps) / decode_s if decode_s > 0 else float("nan")
    return GenerationResult(variant, runtime, [p + n for p, n in zip(prompts, new)], [len(p) for p in prompts],
                            max_new_tokens, ttft * 1e3, rate, [s * 1e3 for s in steps])
