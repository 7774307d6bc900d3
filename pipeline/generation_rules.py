"""What transformers' `generate` does to the logits before a token is chosen, and when a row ends:
one implementation for every runtime of our loop.

Applied in transformers' order (its `_get_logits_processor`): repetition penalty, no-repeat
n-grams, then the end-of-text ids held back until `min_new_tokens`; temperature, top-k and top-p
follow in generation.choose_tokens. A row ends at an end-of-text id (kept) unless `ignore_eos`, or
with the token that completes a stop string (kept, as transformers' `stop_strings`); the other rows
go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import PipelineError


@dataclass(frozen=True)
class Rules:
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    eos: tuple[int, ...] = ()  # the checkpoint's end-of-text ids
    ignore_eos: bool = False
    stop_strings: tuple[str, ...] = ()
    decode: Optional[Callable[[list[int]], str]] = None  # the tokenizer's, for stop strings

    def check(self) -> Rules:
        if not (np.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise PipelineError(
                f"--repetition-penalty must be a finite number > 0, got {self.repetition_penalty}"
            )
        if self.no_repeat_ngram_size < 0 or self.min_new_tokens < 0:
            raise PipelineError("--no-repeat-ngram-size and --min-new-tokens must be >= 0")
        if self.stop_strings and self.decode is None:
            raise PipelineError("--stop needs a tokenizer: give a checkpoint directory with one")
        if any(not s for s in self.stop_strings):
            raise PipelineError("--stop must not be empty")
        return self

    @property
    def stops_at_eos(self) -> bool:
        return bool(self.eos) and not self.ignore_eos

    @property
    def changes_logits(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size > 0
            or (self.min_new_tokens > 0 and self.stops_at_eos)
        )


def banned_ngram_tokens(sequence: Sequence[int], n: int) -> list[int]:
    """The tokens that would repeat an n-gram the sequence already holds (its last n - 1 tokens
    followed by them appear earlier)."""
    if n <= 0 or len(sequence) + 1 < n:
        return []
    if n == 1:
        return list(set(sequence))
    tail = tuple(sequence[len(sequence) - n + 1 :])
    return [
        sequence[i + n - 1]
        for i in range(len(sequence) - n + 1)
        if tuple(sequence[i : i + n - 1]) == tail
    ]


def process(logits: np.ndarray, sequences: list[list[int]], new_counts, rules: Rules) -> np.ndarray:
    """logits [B, V] (float32) after the rules, for rows whose tokens so far (prompt and new) are
    `sequences` and of which new_counts[b] were generated."""
    if not rules.changes_logits:
        return logits
    out = logits.astype(np.float32, copy=True)
    for b, sequence in enumerate(sequences):
        if rules.repetition_penalty != 1.0 and sequence:
            seen = np.unique(np.asarray(sequence))
            scores = out[b, seen]
            out[b, seen] = np.where(
                scores < 0, scores * rules.repetition_penalty, scores / rules.repetition_penalty
            )
        if rules.no_repeat_ngram_size:
            out[b, banned_ngram_tokens(sequence, rules.no_repeat_ngram_size)] = -np.inf
        if rules.stops_at_eos and new_counts[b] < rules.min_new_tokens:
            out[b, list(rules.eos)] = -np.inf
    return out


def ends_row(new_tokens: list[int], rules: Rules) -> bool:
    """Whether the row's last new token ends it."""
    if rules.stops_at_eos and new_tokens[-1] in rules.eos:
        return True
    if rules.stop_strings:
        text, before = rules.decode(new_tokens), rules.decode(new_tokens[:-1])
        return any(s in text and s not in before for s in rules.stop_strings)
    return False


def checkpoint_eos_ids(weights, vocab_size: int) -> tuple[int, ...]:
    """The end-of-text ids a checkpoint directory's config declares (none for the spec's format)."""
    from pathlib import Path

    from .export.genai import checkpoint_eos

    if weights is None or not Path(weights).is_dir():
        return ()
    return tuple(checkpoint_eos(weights, vocab_size) or ())
