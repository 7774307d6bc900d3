"""Decoders: the runtimes' adapters for generation with a KV cache.

Every decoder has the same two calls: prefill(ids, mask, positions) -> the last position's logits
[B, V], then step(tokens [B], mask, positions) -> [B, V], one token per row. The builders at the
bottom are what the runtime registry names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..config import ModelConfig


def pad_left(prompts) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids [B, L] (pad id 0, never attended) and the attention mask [B, L]."""
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position of each token counting real tokens only (padding gets 0; it is never attended)."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)


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
            logits, self.past = self.model(
                torch.from_numpy(ids),
                self.past,
                torch.from_numpy(mask),
                torch.from_numpy(positions),
                use_cache=True,
            )
        return logits[:, -1].numpy()

    def prefill(self, ids, mask, positions):
        self.past = None
        return self._run(ids, mask, positions)

    def step(self, tokens, mask, positions):
        return self._run(tokens[:, None], mask, positions[:, None])

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row r of the cache becomes what row rows[r] held."""
        index = self.torch.from_numpy(np.asarray(rows, np.int64))
        self.past = [tuple(t.index_select(0, index) for t in layer) for layer in self.past]


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

    def reorder(self, rows: np.ndarray) -> None:
        self.ids, self.positions = self.ids[rows], self.positions[rows]


class OrtDecoder:
    """The decoder graph in ONNX Runtime, the cache in preallocated buffers bound by IO binding.

    Per layer and for key and value there are two flat buffers of the largest cache size. A step
    reads its past from the first B*H*P*h floats of one (a contiguous [B, H, P, h] view) and ORT
    writes the present, [B, H, P+S, h], into the other; the two then swap. Nothing is allocated
    or concatenated in numpy per step."""

    def __init__(
        self, path: Path, cfg: ModelConfig, threads: Optional[int] = None, device: str = "cpu"
    ):
        from ..export.io_spec import past_names, present_names
        from .registry import binding_device
        from .session import make_session

        # a decode loop calls back to back in under a millisecond: waking sleeping workers for each
        # call cost 2-thread steps up to 1.6x here, so they spin (as onnxruntime-genai's do)
        self.session = make_session(path, threads, spinning=True, device=device)
        self.device = binding_device(device)
        self.threads, self.gather = threads, None
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
        for name, arr in (
            ("input_ids", ids),
            ("attention_mask", mask),
            ("position_ids", positions),
        ):
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        past_shape = [b, cfg.kv_heads, self.past_len, cfg.head_dim]
        present_shape = [b, cfg.kv_heads, self.past_len + s, cfg.head_dim]
        reads, writes = self.buffers[self.current], self.buffers[1 - self.current]
        for name, buf in zip(self.past_names, reads):
            binding.bind_input(name, self.device, 0, np.float32, past_shape, buf.ctypes.data)
        for name, buf in zip(self.present_names, writes):
            binding.bind_output(name, self.device, 0, np.float32, present_shape, buf.ctypes.data)
        logits = self.logits[: b * s * cfg.vocab_size].reshape(b, s, cfg.vocab_size)
        binding.bind_output(
            "logits", self.device, 0, np.float32, [b, s, cfg.vocab_size], logits.ctypes.data
        )
        self.session.run_with_iobinding(binding)
        self.current, self.past_len = 1 - self.current, self.past_len + s
        return logits[:, -1].copy()

    def prefill(self, ids, mask, positions):
        self._allocate(*ids.shape)
        return self._run(ids, mask, positions)

    def step(self, tokens, mask, positions):
        return self._run(tokens[:, None], mask, positions[:, None])

    def _gathered(self, rows, sources, targets, shape) -> None:
        """targets' rows = sources' rows[r], in ORT (cache_gather)."""
        from .cache_gather import CacheGather

        if self.gather is None:
            self.gather = CacheGather(len(self.past_names), self.threads)
        self.gather.gather(rows, sources, targets, shape)

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: the past the next step reads is gathered by rows into the other buffer
        of each pair, which becomes the one read."""
        cfg = self.cfg
        shape = [len(rows), cfg.kv_heads, self.past_len, cfg.head_dim]
        self._gathered(rows, self.buffers[self.current], self.buffers[1 - self.current], shape)
        self.current = 1 - self.current


class SharedCacheDecoder(OrtDecoder):
    """The ORT-only decoders (GroupQueryAttention) with the cache in place: per layer one key and
    one value buffer [B, N_kv, S_max, h], bound as both past and present, which the kernel reads
    and extends where each row ends. Nothing is copied per step. Rows keep their tokens from
    position 0 and their own lengths (the mask's row sums): the loop's left-padded prompts are
    moved to the front here, and each row's next token goes right after its own last one."""

    capacity: Optional[int] = None  # tokens per row the cache holds (None: the model's context)

    def reserve(self, tokens: int) -> None:
        """Size the next generation's cache for `tokens` per row: the kernel's work per step
        grows with the buffer's length, not only the row's (10% per step at 288 vs 1024 here)."""
        self.capacity = min(tokens, self.cfg.max_seq_len)

    def _allocate(self, batch: int, prompt_len: int):
        cfg = self.cfg
        self.length = self.capacity or cfg.max_seq_len
        shape = [batch, cfg.kv_heads, self.length, cfg.head_dim]
        self.buffers = [np.zeros(shape, np.float32) for _ in self.past_names]
        self.spare = None  # beam search's second set, made on its first reorder
        self.logits = np.empty(batch * prompt_len * cfg.vocab_size, np.float32)
        # bound once per generation: the cache's address and shape never change (the steps'
        # inputs and logits are bound once too, after the prompt: _bind_step)
        self.binding = self.session.io_binding()
        for past, present, buf in zip(self.past_names, self.present_names, self.buffers):
            self.binding.bind_input(past, self.device, 0, np.float32, shape, buf.ctypes.data)
            self.binding.bind_output(present, self.device, 0, np.float32, shape, buf.ctypes.data)
        self.logits_shape = None

    def _run(self, ids, mask, positions):
        b, s = ids.shape
        vocab = self.cfg.vocab_size
        self.inputs = [np.ascontiguousarray(a, np.int64) for a in (ids, mask, positions)]
        for name, arr in zip(("input_ids", "attention_mask", "position_ids"), self.inputs):
            self.binding.bind_cpu_input(name, arr)
        logits = self.logits[: b * s * vocab].reshape(b, s, vocab)
        if self.logits_shape != (b, s):
            self.binding.bind_output(
                "logits", self.device, 0, np.float32, [b, s, vocab], logits.ctypes.data
            )
            self.logits_shape = (b, s)
        self.session.run_with_iobinding(self.binding)
        return logits

    def prefill(self, ids, mask, positions):
        b, s = ids.shape
        self._allocate(b, s)
        self.lengths = mask.sum(1).astype(np.int64)
        self.step_inputs = None
        front = np.arange(s)[None, :] < self.lengths[:, None]  # each row's tokens, moved first
        shift = (s - self.lengths)[:, None]
        gather = lambda a: np.take_along_axis(
            a, np.minimum(np.arange(s)[None, :] + shift, s - 1), 1
        )
        right_ids = np.where(front, gather(ids), 0)
        right_positions = np.where(front, gather(positions), 0)
        logits = self._run(right_ids, front.astype(np.int64), right_positions)
        return logits[np.arange(b), self.lengths - 1].copy()

    def step(self, tokens, mask, positions):
        if self.lengths.max() >= self.length:
            raise ValueError(f"the cache holds {self.length} tokens per row")
        if self.step_inputs is None:
            self._bind_step(tokens.shape[0])
        ids, own, next_positions = self.step_inputs
        rows = np.arange(tokens.shape[0])
        own[rows, self.lengths] = 1  # row b: its L_b cached tokens and now the new one
        ids[:, 0] = tokens
        next_positions[:, 0] = self.lengths
        self.session.run_with_iobinding(self.binding)
        self.lengths += 1
        return self.step_logits[:, 0].copy()

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: each cache buffer gathered by rows into a spare of its shape (in ORT),
        which is then bound as past and present; each row's length and mask follow its row."""
        shape = list(self.buffers[0].shape)
        if getattr(self, "spare", None) is None or self.spare[0].shape != self.buffers[0].shape:
            self.spare = [np.empty_like(b) for b in self.buffers]
        self._gathered(rows, self.buffers, self.spare, shape)
        self.buffers, self.spare = self.spare, self.buffers
        for past, present, buf in zip(self.past_names, self.present_names, self.buffers):
            self.binding.bind_input(past, self.device, 0, np.float32, shape, buf.ctypes.data)
            self.binding.bind_output(present, self.device, 0, np.float32, shape, buf.ctypes.data)
        self.lengths = self.lengths[rows]
        if self.step_inputs is not None:
            own = self.step_inputs[1]
            own[:] = own[rows]

    def _bind_step(self, batch: int) -> None:
        """The step's inputs bound once per generation, then written in place: ids and positions
        [B, 1], and a mask as wide as the cache with ones up to each row's length. Its width is
        GroupQueryAttention's total_sequence_length, which only has to fit the buffer (each row's
        own length is the mask's sum), so every step has the same shapes: a width growing by one
        per step made ORT plan each call afresh (5-8% of a tiny step, measured)."""
        import onnxruntime as ort

        own = (np.arange(self.length)[None, :] < self.lengths[:, None]).astype(np.int64)
        self.step_inputs = (np.zeros((batch, 1), np.int64), own, np.zeros((batch, 1), np.int64))
        for name, arr in zip(("input_ids", "attention_mask", "position_ids"), self.step_inputs):
            # an OrtValue over the array's own memory: writes to the array are what the next
            # run reads
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        vocab = self.cfg.vocab_size
        self.step_logits = self.logits[: batch * vocab].reshape(batch, 1, vocab)
        self.binding.bind_output(
            "logits", self.device, 0, np.float32, [batch, 1, vocab], self.step_logits.ctypes.data
        )


def teacher_forced_logits(decoder, ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """Logits [B, S - prompt_len + 1, V] at positions prompt_len-1 .. S-1: the prompt in one call,
    then the given tokens one per call, as generation feeds them."""
    mask = np.ones_like(ids[:, :prompt_len])
    out = [decoder.prefill(ids[:, :prompt_len], mask, positions_from_mask(mask))]
    for p in range(prompt_len, ids.shape[1]):
        mask = np.ones_like(ids[:, : p + 1])
        out.append(decoder.step(ids[:, p], mask, np.full(ids.shape[0], p)))
    return np.stack(out, axis=1)


def torch_decoder(runtime, workspace, variant: str, threads: Optional[int] = None) -> TorchDecoder:
    return TorchDecoder(workspace.model(variant), threads)


def torch_recompute_decoder(
    runtime, workspace, variant: str, threads: Optional[int] = None
) -> TorchRecomputeDecoder:
    return TorchRecomputeDecoder(workspace.model(variant), threads)


def ort_decoder(runtime, workspace, variant: str, threads: Optional[int] = None) -> OrtDecoder:
    """The portable decoder with its standard past/present contract (left padding), or a fused
    one (GroupQueryAttention) with its cache in place."""
    from ..export.flavours import FLAVOURS

    path = workspace.artifact(variant, runtime.decoder_flavour)
    kind = SharedCacheDecoder if FLAVOURS[runtime.decoder_flavour].fused else OrtDecoder
    return kind(path, workspace.model_config(variant), threads, runtime.device)


def genai_decoder(runtime, workspace, variant: str, threads: Optional[int] = None):
    from .genai import GenaiDecoder

    return GenaiDecoder(
        workspace.genai_folder(variant, threads), workspace.model_config(variant), threads
    )
