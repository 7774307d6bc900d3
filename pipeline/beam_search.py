"""Beam search as transformers' `generate(num_beams=N)` does it, over any decoder of our loop.

Each prompt keeps N running beams (rows of one batch) and up to N finished hypotheses. A step
scores every beam's next token by its log-softmax after the rules (generation_rules, applied to
the log-probabilities as transformers' processors are), adds the beam's running score, keeps the
best 2N (or more, with several end-of-text ids) candidates, moves the candidates that end (an
end-of-text id, a stop string, the last allowed token) to the finished set with their score over
length ** length_penalty, and continues with the best N that did not end; the decoder's cache is
reordered to follow them (decoder.reorder: a gather along the batch axis). Stopping follows
transformers' early_stopping: True ends a prompt once N hypotheses are finished; False (its
default) once no running beam can beat the worst finished one at the current length; "never"
also with the best length still to come when length_penalty > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import PipelineError
from .generation_rules import Rules, ends_row, process
from .runtime.decoders import pad_left, positions_from_mask

NEG = np.float32(-1.0e9)  # transformers' "never chosen" score


@dataclass(frozen=True)
class Beams:
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False  # True, False or "never", as transformers

    def check(self) -> Beams:
        if self.num_beams < 1:
            raise PipelineError(f"--num-beams must be >= 1, got {self.num_beams}")
        if not np.isfinite(self.length_penalty):
            raise PipelineError(f"--length-penalty must be finite, got {self.length_penalty}")
        if self.early_stopping not in (True, False, "never"):
            raise PipelineError("--early-stopping is a flag (or 'never' in the library)")
        return self


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32) - logits.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first (a stable order for ties)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


class _Search:
    """The state of one beam search over B prompts of N beams (transformers' tensors, in numpy)."""

    def __init__(self, prompts: list[list[int]], beams: Beams, rules: Rules, max_new: int):
        self.prompts, self.beams, self.rules, self.max_new = prompts, beams, rules, max_new
        b, n = len(prompts), beams.num_beams
        self.running = [[[] for _ in range(n)] for _ in range(b)]  # new tokens per beam
        self.running_scores = np.full((b, n), NEG, np.float32)
        self.running_scores[:, 0] = 0.0  # the N copies of a prompt: only the first may start
        self.finished = [[[] for _ in range(n)] for _ in range(b)]
        self.finished_scores = np.full((b, n), NEG, np.float32)
        self.is_finished = np.zeros((b, n), bool)
        self.improvable = np.ones(b, bool)
        n_eos = len(rules.eos) if rules.stops_at_eos else 0
        self.keep = max(2, 1 + n_eos) * n

    def step(self, logits: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Logits [B*N, V] after t new tokens -> (the rows each new beam continues, its token,
        whether the search goes on)."""
        b, n = self.running_scores.shape
        sequences = [self.prompts[p] + beam for p in range(b) for beam in self.running[p]]
        scores = process(log_softmax(logits), sequences, [t] * (b * n), self.rules)
        vocab = scores.shape[-1]
        total = (scores.reshape(b, n, vocab) + self.running_scores[:, :, None]).reshape(b, -1)
        top = _top(total, self.keep)
        cand_scores = np.take_along_axis(total, top, 1).astype(np.float32)
        cand_beam, cand_token = top // vocab, top % vocab
        cand = [[self.running[p][cand_beam[p, j]] + [int(cand_token[p, j])]
                 for j in range(self.keep)] for p in range(b)]  # fmt: skip
        last = t + 1 >= self.max_new
        ends = np.array([[last or ends_row(c, self.rules) for c in row] for row in cand])
        self._finish(cand, cand_scores, ends, t)
        chosen = _top(cand_scores + ends * NEG, n)
        self.running_scores = np.take_along_axis(cand_scores + ends * NEG, chosen, 1)
        self.running = [[cand[p][j] for j in chosen[p]] for p in range(b)]
        rows = (np.take_along_axis(cand_beam, chosen, 1) + np.arange(b)[:, None] * n).reshape(-1)
        tokens = np.take_along_axis(cand_token, chosen, 1).reshape(-1)
        self._update_improvable(t + 1)
        go_on = (
            self.improvable.any()
            and not (self.is_finished.all() and self.beams.early_stopping is True)
            and not ends.all()
        )
        return rows, tokens, bool(go_on)

    def _finish(self, cand, cand_scores, ends, t: int) -> None:
        """Candidates among the first N that end join the finished set, if they beat it."""
        b, n = self.finished_scores.shape
        scores = cand_scores / np.float32((t + 1) ** self.beams.length_penalty)
        full = self.is_finished.all(-1, keepdims=True) & (self.beams.early_stopping is True)
        just = ends & (np.arange(self.keep) < n)[None, :]
        scores = scores + full * NEG + (~self.improvable[:, None]) * NEG + (~just) * NEG
        merged = np.concatenate([self.finished_scores, scores.astype(np.float32)], 1)
        merged_flags = np.concatenate([self.is_finished, just], 1)
        best = _top(merged, n)
        for p in range(b):
            pool = self.finished[p] + cand[p]
            self.finished[p] = [pool[j] for j in best[p]]
        self.finished_scores = np.take_along_axis(merged, best, 1)
        self.is_finished = np.take_along_axis(merged_flags, best, 1)

    def _update_improvable(self, new_len: int) -> None:
        lp, stop = self.beams.length_penalty, self.beams.early_stopping
        length = self.max_new if (stop == "never" and lp > 0.0) else new_len
        best_running = self.running_scores[:, 0] / np.float32(length**lp)
        worst = np.where(self.is_finished, self.finished_scores.min(1, keepdims=True), NEG)
        self.improvable &= (best_running[:, None] > worst).any(-1)

    def best(self) -> list[list[int]]:
        return [self.finished[p][0] for p in range(len(self.prompts))]


def run_beam_search(decoder, prompts: list[list[int]], max_new_tokens: int, beams: Beams,
                    rules: Rules = Rules()) -> tuple[list[list[int]], float, list]:  # fmt: skip
    """The new tokens of each prompt's best hypothesis (transformers' sequences[:, :1]), the time
    to the first scores (s) and each later step's time (s), as generation.run_decoder."""
    import time

    n = beams.num_beams
    if not hasattr(decoder, "reorder"):
        raise PipelineError("this runtime cannot reorder its cache: no beam search in it")
    expanded = [p for p in prompts for _ in range(n)]
    ids, mask = pad_left(expanded)
    if hasattr(decoder, "reserve"):
        decoder.reserve(ids.shape[1] + max_new_tokens)
    positions = positions_from_mask(mask)
    search = _Search(prompts, beams, rules, max_new_tokens)
    start = time.perf_counter()
    logits = decoder.prefill(ids, mask, positions)
    ttft, steps = time.perf_counter() - start, []
    next_pos = positions[:, -1] + 1
    for t in range(max_new_tokens):
        rows, tokens, go_on = search.step(logits, t)
        if not go_on:
            break
        t0 = time.perf_counter()
        decoder.reorder(rows)
        mask = np.concatenate([mask[rows], np.ones((mask.shape[0], 1), np.int64)], 1)
        next_pos = next_pos[rows]
        logits = decoder.step(tokens, mask, next_pos)
        steps.append(time.perf_counter() - t0)
        next_pos = next_pos + 1
    return search.best(), ttft, steps
