"""Do the runtimes compute the reference logits?

baseline: eager torch and ORT (both artifacts: portable "ort", optimised "ort-opt"), each
against the example logits.
other variants: ORT against eager torch of the same variant (the examples are baseline logits,
so their deviation is shown as information only).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..api import load_model
from ..errors import PipelineError
from ..examples import Example, load_examples
from ..export import ensure_export, update_manifest
from ..weights import PathLike, load_state_dict, weights_path
from .session import FLAVOUR_OF, OrtRunner, TorchRunner

DEFAULT_TOLERANCE = 1e-4


@dataclass
class Check:
    variant: str
    runtime: str
    reference: str  # "examples" or "torch"
    seq_len: int
    example: Optional[int]  # index in the examples file (two examples may share a length)
    max_abs: float
    max_rel: float  # max |diff| / max |reference|
    passed: Optional[bool]  # None: information only

    def to_dict(self) -> dict:
        return asdict(self)


def compare(variant: str, runtime: str, reference: str, got: np.ndarray, want: np.ndarray,
            tolerance: Optional[float], example: Optional[int] = None, seq_len: Optional[int] = None) -> Check:
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    scale = float(np.abs(want).max())
    passed = None if tolerance is None else diff <= tolerance * max(1.0, scale)
    return Check(variant, runtime, reference, int(want.shape[0] if seq_len is None else seq_len), example, diff, diff / max(scale, 1e-30), passed)


# runtime name -> decoder artifact flavour: the cache-carrying graphs, checked step by step
DECODER_FLAVOUR_OF = {"ort-decoder": "decoder", "ort-opt-decoder": "decoder-optimized"}


def verify(variants: Iterable[str], runtimes: Iterable[str] = ("ort", "ort-opt", "torch"),
           weights: Optional[PathLike] = None, examples: Optional[PathLike] = None,
           out_dir: PathLike = "exported", tolerance: float = DEFAULT_TOLERANCE,
           on_check: Optional[Callable[[Check], None]] = None,
           on_note: Optional[Callable[[str], None]] = None, decoder_steps: Optional[int] = None,
           on_variant: Optional[Callable[[str], None]] = None) -> list[Check]:
    """Every check; results are recorded in the manifest where the folder allows it, and
    `on_note` hears when it does not (checking never needs write access).

    Decoder runtimes (DECODER_FLAVOUR_OF) get each example as generation feeds it: its first half
    as the prompt, then one token per call; the logits at every fed position are compared.
    decoder_steps caps the one-token calls per example (the prompt grows to match): the longest
    example then still reaches its last position, in a fraction of the calls."""
    from ..config import DEFAULT_SIZE, get_variant, size_of
    from ..generate import OrtDecoder, teacher_forced_logits

    variants = list(variants)
    cfg = get_variant(variants[0]).config if variants else get_variant("baseline").config  # one size per call
    weights = weights_path(weights, cfg)
    state_dict = load_state_dict(weights, cfg)
    cases: list[Example] = load_examples(examples)
    runtimes = list(runtimes)
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        if on_check:
            on_check(check)

    for variant in variants:
        torch_runner = TorchRunner(load_model(variant, state_dict=state_dict))
        vocab = get_variant(variant).config.vocab_size
        batch_ids = np.random.default_rng(31).integers(0, vocab, (3, 40), dtype=np.int64)  # batch B > 1
        eager_batch = torch_runner.run(batch_ids)
        eager = [torch_runner.run(ex.input_ids.numpy())[0] for ex in cases]  # row 0 of batch 1
        is_baseline = variant == "baseline"
        # the examples are the spec's model's: another size only borrows their token ids
        with_examples = size_of(get_variant(variant).config) == DEFAULT_SIZE
        if "torch" in runtimes and with_examples:
            for i, (ex, out) in enumerate(zip(cases, eager)):
                record(compare(variant, "torch", "examples", out, ex.logits.numpy(),
                               tolerance if is_baseline else None, i))
        for runtime, flavour in FLAVOUR_OF.items():
            if runtime not in runtimes:
                continue
            graded_tolerance = None if flavour == "int8" else tolerance  # int8 is approximate: info only
            path = ensure_export(variant, weights, Path(out_dir), state_dict, flavour)
            ort_runner = OrtRunner(path)
            ort_checks = []
            for i, (ex, out) in enumerate(zip(cases, eager)):
                got = ort_runner.run(ex.input_ids.numpy())[0]
                if is_baseline:
                    ort_checks.append(compare(variant, runtime, "examples", got, ex.logits.numpy(), graded_tolerance, i))
                ort_checks.append(compare(variant, runtime, "torch", got, out, graded_tolerance, i))
                if not is_baseline and with_examples:
                    ort_checks.append(compare(variant, runtime, "examples", got, ex.logits.numpy(), None, i))
            ort_checks.append(compare(variant, runtime, "torch (batch 3)", ort_runner.run(batch_ids), eager_batch,
                                      graded_tolerance, None, batch_ids.shape[1]))
            for c in ort_checks:
                record(c)
            _record_verification(out_dir, path, ort_checks, tolerance, on_note)
        for runtime, flavour in DECODER_FLAVOUR_OF.items():
            if runtime not in runtimes:
                continue
            path = ensure_export(variant, weights, Path(out_dir), state_dict, flavour)
            decoder = OrtDecoder(path, get_variant(variant).config)
            mine = []
            for i, (ex, want) in enumerate(zip(cases, eager)):
                prompt = max(1, ex.seq_len // 2, ex.seq_len - (decoder_steps or ex.seq_len))
                got = teacher_forced_logits(decoder, ex.input_ids.numpy(), prompt)[0]
                mine.append(compare(variant, runtime, "torch", got, want[prompt - 1:], tolerance, i, ex.seq_len))
                if with_examples:
                    mine.append(compare(variant, runtime, "examples", got, ex.logits.numpy()[prompt - 1:],
                                        tolerance if is_baseline else None, i, ex.seq_len))
            for c in mine:
                record(c)
            _record_verification(out_dir, path, mine, tolerance, on_note, mode="prompt, then one token per step"
                                 + (f" (at most {decoder_steps})" if decoder_steps else ""))
        if on_variant:
            on_variant(variant)
    return checks


def _record_verification(out_dir, path: Path, checks: list[Check], tolerance: float,
                         on_note: Optional[Callable[[str], None]], **extra) -> None:
    """The graded checks' verdict in the manifest; a folder that cannot be written is a note."""
    graded = [c for c in checks if c.passed is not None]
    if not graded:
        return
    try:
        update_manifest(out_dir, path, {"verification": {
            "passed": all(c.passed for c in graded), "tolerance": tolerance,
            "worst_max_abs": max(c.max_abs for c in graded),
            "seq_lens": sorted({c.seq_len for c in graded}),
            "against": sorted({c.reference for c in graded}), **extra}})
    except PipelineError as exc:
        if on_note:
            on_note(f"results not recorded: {exc}")


def summarize(checks: list[Check]) -> list[dict]:
    """One row per (variant, runtime, reference): the worst case over the example lengths."""
    groups: dict[tuple, list[Check]] = {}
    for c in checks:
        groups.setdefault((c.variant, c.runtime, c.reference), []).append(c)
    rows = []
    for (variant, runtime, reference), cs in groups.items():
        graded = [c.passed for c in cs if c.passed is not None]
        rows.append({"variant": variant, "runtime": runtime, "reference": reference,
                     "lengths": ",".join(str(c.seq_len) for c in cs),
                     "max_abs": max(c.max_abs for c in cs), "max_rel": max(c.max_rel for c in cs),
                     "passed": all(graded) if graded else None})
    return rows
