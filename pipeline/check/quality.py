"""`pipeline eval`: how much worse each runtime's graph is on real text, against the exact reference.

The text is scored the usual way (transformers' perplexity recipe): windows of `window` tokens
moving by `stride`, each window scoring only the tokens it adds (the first window every token but
its first), with the window's earlier tokens as context. For every runtime and the reference the
same windows give, per scored token, the negative log-likelihood of the true next token; beside
the reference's distribution, the runtime's KL(p_reference || p_runtime) and whether its top-1
token is the reference's. Perplexity is exp(mean NLL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import PipelineError
from ..fileio import not_found


def read_text_file(path: Path, what: str = "--text-file") -> str:
    """The file's text; one line for a path that is not a readable UTF-8 text file."""
    path = Path(path)
    if not path.exists():
        raise not_found(path, what)
    if path.is_dir():
        raise PipelineError(f"{what} {path} is a folder, not a text file")
    if not path.is_file():
        raise PipelineError(f"{what} {path} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise PipelineError(f"{what} {path} is empty")
    return text


def read_ids_file(path: Path, vocab_size: int) -> list[int]:
    """Token ids separated by commas or white space."""
    text = read_text_file(path, "--ids-file")
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError as exc:
        raise PipelineError(f"--ids-file {path}: not integer token ids ({exc})") from exc
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise PipelineError(f"--ids-file {path}: token id {bad} is outside [0, {vocab_size - 1}]")
    return ids


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window: tokens [begin, end) are fed, and the
    positions from `first` to end - 1 are predicted (from the logits one position before)."""
    if n_tokens < 2:
        raise PipelineError(f"the text is {n_tokens} token(s): perplexity needs at least two")
    if not 0 < stride <= window:
        raise PipelineError(f"--stride must be between 1 and --window ({window}), got {stride}")
    out, scored_to = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == n_tokens:
            break
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass
class Score:
    """One runtime's scores over the text."""

    runtime: str
    nll_sum: float = 0.0
    tokens: int = 0
    kl_sum: float = 0.0
    top1_same: int = 0
    seconds: float = 0.0
    per_window_nll: list = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    def to_dict(self, reference: Optional[Score] = None) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "per_window_nll"}
        data.update(
            perplexity=self.perplexity,
            mean_nll=self.nll_sum / self.tokens,
            kl_mean=self.kl_sum / self.tokens,
            top1_agreement_pct=100.0 * self.top1_same / self.tokens,
            tokens_per_s=self.tokens / self.seconds if self.seconds > 0 else None,
        )
        if reference is not None:
            data["perplexity_change_pct"] = 100.0 * (self.perplexity / reference.perplexity - 1)
        return data


def evaluate(
    ids: list[int],
    runners: dict[str, Callable[[np.ndarray], np.ndarray]],
    reference: Callable[[np.ndarray], np.ndarray],
    window: int,
    stride: int,
    on_window: Optional[Callable[[int, int], None]] = None,
) -> tuple[Score, list[Score]]:
    """(the reference's score, each runner's) over the windows of ids; runners and the reference
    map ids [1, S] to logits [1, S, V]."""
    spans = windows(len(ids), window, stride)
    ref = Score("reference")
    scores = [Score(name) for name in runners]
    tokens = np.asarray(ids, np.int64)
    for i, (begin, end, first) in enumerate(spans):
        chunk = tokens[None, begin:end]
        targets = tokens[first:end]
        rows = np.arange(first - 1, end - 1) - begin  # the logits that predict the targets
        t0 = time.perf_counter()
        want = _log_softmax(np.asarray(reference(chunk))[0, rows])
        ref.seconds += time.perf_counter() - t0
        _add(ref, want, want, targets)
        for score, run in zip(scores, runners.values()):
            t0 = time.perf_counter()
            logits = np.asarray(run(chunk))
            score.seconds += time.perf_counter() - t0
            if not np.isfinite(logits).all():
                raise PipelineError(f"{score.runtime} gave non-finite logits in window {i + 1}")
            _add(score, _log_softmax(logits[0, rows]), want, targets)
        if on_window:
            on_window(i + 1, len(spans))
    return ref, scores


def _add(score: Score, got: np.ndarray, want: np.ndarray, targets: np.ndarray) -> None:
    nll = -got[np.arange(len(targets)), targets]
    score.nll_sum += float(nll.sum())
    score.per_window_nll.append(float(nll.mean()))
    score.tokens += len(targets)
    score.kl_sum += float((np.exp(want) * (want - got)).sum())
    score.top1_same += int((got.argmax(-1) == want.argmax(-1)).sum())


def eval_rows(reference: Score, scores: list[Score], note: str) -> tuple[list[str], list[list]]:
    """(headers, rows) of eval's table: the reference first, then each runtime."""
    return quality_rows({"reference": {"note": note, **reference.to_dict()},
                         "runtimes": [s.to_dict(reference) for s in scores]})  # fmt: skip


def reference_runner(ws, variant: str, threads=None) -> tuple[Callable, str]:
    """(ids -> logits, what it is): transformers' own class in float64 for a checkpoint that can
    express the variant, else eager torch."""
    from ..runtime.registry import build, runtime_with

    if ws.weights is not None and Path(ws.weights).is_dir():
        from .reference import transformers_reference

        run, note = transformers_reference(Path(ws.weights), variant)
        if run is not None:
            return run, "transformers float64"
    return build(runtime_with("reference"), "forward", ws, variant, threads).run, "eager torch"


def text_ids(ws, variant: str, text_file=None, ids_file=None,
             ids_option: str = "--ids-file") -> list[int]:  # fmt: skip
    """The token ids of a text file (the checkpoint's tokenizer) or of an ids file; ids_option:
    how the command takes ids instead, for the refusal of text without a tokenizer."""
    from ..config import get_variant

    vocab = get_variant(variant).config.vocab_size
    if text_file is None:
        return read_ids_file(ids_file, vocab)
    from ..text import load_text

    text = read_text_file(text_file)
    return load_text(ws.weights, vocab, ids_option).tokenizer.encode(text).ids


def teacher_forced_runner(decoder) -> Callable[[np.ndarray], np.ndarray]:
    """A decoder as eval scores it: ids [1, S] -> logits [1, S, V], the first token as the
    prompt and every other one fed as a decode step, the way generation feeds them."""
    if hasattr(decoder, "teacher_forced"):  # genai: its own loop keeps the cache
        return decoder.teacher_forced
    from ..runtime.decoders import teacher_forced_logits

    return lambda ids: teacher_forced_logits(decoder, ids, 1)


def _decoder_only(name: str) -> bool:
    from ..runtime.registry import RUNTIMES

    return name in RUNTIMES and not RUNTIMES[name].runs("forward")


def split_runtimes(text: str) -> tuple[list[str], list[str]]:
    """eval's --runtime -> (full-forward runtimes, decoder runtimes): 'NAME-decoder' (and a
    runtime that has only a decoder, genai) is the runtime's decoder fed token by token,
    anything else its full forward."""
    from ..runtime.registry import ALIASES, resolve_runtimes

    forward, decoders = [], []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.endswith("-decoder") or _decoder_only(part):
            decoders += resolve_runtimes(part.removesuffix("-decoder"), "decoder")
        else:
            forward += resolve_runtimes(part, "forward", ALIASES["forward"])
    return list(dict.fromkeys(forward)), list(dict.fromkeys(decoders))


def decoder_label(runtime: str) -> str:
    return runtime if _decoder_only(runtime) else f"{runtime}-decoder"


def eval_runners(ws, variant: str, runtimes: list[str], window: int, threads=None, recipes=(),
                 calibration_ids=None, on_prepare=None, decoders=()) -> tuple[Callable, str, dict]:  # fmt: skip
    """(the reference, what it is, {name: ids -> logits}) for evaluate(): each runtime's forward,
    each decoder runtime's decoder fed token by token, and each weight recipe's (the
    ORT-optimised graph quantized by it, GPTQ calibrated on windows of calibration_ids).
    on_prepare(name) before each is made (an export or a quantization may take a while)."""
    from ..runtime.recipe_runner import calibration_feeds, recipe_runner
    from ..runtime.registry import build

    say = on_prepare or (lambda name: None)
    say("reference")
    reference, note = reference_runner(ws, variant, threads)
    runners = {}
    for rt in runtimes:
        say(rt)
        runners[rt] = build(rt, "forward", ws, variant, threads).run
    for rt in decoders:
        say(decoder_label(rt))
        runners[decoder_label(rt)] = teacher_forced_runner(
            build(rt, "decoder", ws, variant, threads)
        )
    feeds = calibration_feeds(calibration_ids, window) if calibration_ids else None
    for name in recipes:
        say(f"recipe {name}")
        runners[f"recipe {name}"] = recipe_runner(ws, variant, name, threads, feeds).run
    return reference, note, runners


def score_text_file(ws, variant: str, text_file, runtimes: list[str], threads=None,
                    on_window=None, ids=None) -> dict:  # fmt: skip
    """The variant's runtimes scored on a text file with eval's default windows (the model's
    context, stride half of it), as a JSON-ready record (verify, all and the report show it);
    ids: the text's token ids, when the caller has them already."""
    from ..config import get_variant

    if ids is None:
        ids = text_ids(ws, variant, text_file=text_file)
    window = get_variant(variant).config.max_seq_len
    stride = max(1, window // 2)
    spans = windows(len(ids), window, stride)
    reference, note, runners = eval_runners(ws, variant, runtimes, window, threads)
    ref, scores = evaluate(ids, runners, reference, window, stride, on_window)
    return {
        "variant": variant,
        "text_file": str(text_file),
        "window": window,
        "stride": stride,
        "windows": len(spans),
        "tokens_scored": ref.tokens,
        "reference": {"note": note, **ref.to_dict()},
        "runtimes": [s.to_dict(ref) for s in scores],
    }


def quality_rows(record: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of a score_text_file record: eval's table."""
    ref = record["reference"]
    headers = ["runtime", "perplexity", "vs reference %", "mean KL", "top-1 agree %", "tokens/s"]
    rows = [[f"reference ({ref['note']})", ref["perplexity"], 0.0, 0.0, 100.0, ref["tokens_per_s"]]]
    rows += [[r["runtime"], r["perplexity"], r["perplexity_change_pct"], r["kl_mean"],
              r["top1_agreement_pct"], r["tokens_per_s"]] for r in record["runtimes"]]  # fmt: skip
    return headers, rows
