"""The example inputs and their reference logits (example_outputs.pt format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .config import BASE_CONFIG, ModelConfig, get_variant
from .errors import PipelineError
from .weights import DEFAULT_EXAMPLES, PathLike, dense_tensor, torch_load_safely

STANDIN_LENGTHS = (1, 2, 17, 128, 512, 1024)
STANDIN_IDS_SEED = 7


@dataclass(frozen=True)
class Example:
    input_ids: torch.Tensor  # LongTensor [1, S]
    logits: torch.Tensor  # FloatTensor [S, V]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]


def validate_ids(
    ids: torch.Tensor, cfg: ModelConfig = BASE_CONFIG, what: str = "input_ids"
) -> torch.Tensor:
    """Return ids as LongTensor [1, S] or raise a one-line PipelineError."""
    if not isinstance(ids, torch.Tensor):
        raise PipelineError(f"{what}: expected a tensor, found {type(ids).__name__}")
    dense_tensor(what, ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise PipelineError(f"{what}: expected integer token ids, found dtype {ids.dtype}")
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise PipelineError(f"{what}: expected shape [S] or [1, S], found {list(ids.shape)}")
    if ids.numel() == 0:
        raise PipelineError(f"{what}: empty sequence")
    if ids.numel() > cfg.max_seq_len:
        raise PipelineError(
            f"{what}: {ids.numel()} tokens, more than the model's {cfg.max_seq_len}"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = lo if lo < 0 else hi
        raise PipelineError(f"{what}: token id {bad} is outside [0, {cfg.vocab_size - 1}]")
    return ids.to(torch.int64).reshape(1, -1)


def load_examples(path: Optional[PathLike] = None, cfg: ModelConfig = BASE_CONFIG) -> list[Example]:
    path = DEFAULT_EXAMPLES if path is None else path
    raw = torch_load_safely(path, "examples")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PipelineError(
            f"examples {path}: expected a non-empty list of dicts, found {type(raw).__name__}"
        )
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not {"input_ids", "logits"} <= set(item):
            raise PipelineError(
                f"examples {path}: item {i} is not a dict with 'input_ids' and 'logits'"
            )
        ids = validate_ids(item["input_ids"], cfg, what=f"examples item {i} input_ids")
        logits = item["logits"]
        want = [ids.shape[1], cfg.vocab_size]
        if not isinstance(logits, torch.Tensor) or list(logits.shape) != want:
            found = (
                list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            )
            raise PipelineError(
                f"examples {path}: item {i} logits have shape {found}, expected {want}"
            )
        dense_tensor(f"examples {path}: item {i} logits", logits)
        if not logits.is_floating_point():
            raise PipelineError(f"examples {path}: item {i} logits are not floats")
        logits = logits.to(torch.float32)  # checked after the cast: 1e39 in float64 is inf here
        if not torch.isfinite(logits).all():
            raise PipelineError(
                f"examples {path}: item {i} logits are not finite in float32 (inf, nan, or beyond 3.4e38)"
            )
        out.append(Example(ids, logits))
    return out


def standin_input_ids(
    lengths=STANDIN_LENGTHS, cfg: ModelConfig = BASE_CONFIG
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(STANDIN_IDS_SEED)
    return [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in lengths]


def example_input_ids(cfg: ModelConfig, examples=None) -> list[torch.Tensor]:
    """The token ids [1, S] a model of cfg is checked and compared on: the examples' (a loaded
    list, or the file to load) where they fit it, else ids drawn at the examples' lengths (up to
    the model's context)."""
    if cfg.vocab_size >= BASE_CONFIG.vocab_size and cfg.max_seq_len >= BASE_CONFIG.max_seq_len:
        loaded = examples if isinstance(examples, list) else load_examples(examples)
        return [ex.input_ids for ex in loaded]
    lengths = sorted({min(n, cfg.max_seq_len) for n in STANDIN_LENGTHS})
    return [ids.reshape(1, -1) for ids in standin_input_ids(lengths, cfg)]


def example_cases(variant: str, examples=None) -> list:
    """The variant's example_input_ids as numpy arrays [1, S] (what verify and the recorded
    references feed every runtime)."""
    return [ids.numpy() for ids in example_input_ids(get_variant(variant).config, examples)]
