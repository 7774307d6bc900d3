"""Do the runtimes compute the reference logits?

baseline: every runtime against the example logits and eager torch.
other variants: every runtime against eager torch of the same variant (the examples are baseline
logits, so their deviation is shown as information only).
Full-forward runtimes get each example in one call; decoder runtimes get it as generation feeds
it (a prompt, then one token per call). An approximate runtime (registry: exact=False) is
reported, never graded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import DEFAULT_SIZE, get_variant, variant_size
from ..errors import PipelineError
from ..examples import example_cases, load_examples
from ..export import update_manifest
from ..runtime.decoders import teacher_forced_logits
from ..runtime.registry import build, get_runtime, runtime_with

DEFAULT_TOLERANCE = 1e-4
REFERENCE, PORTABLE, FAST = map(runtime_with, ("reference", "portable", "fast"))


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
    graph: str = "forward"  # or "decoder": fed as generation feeds it
    top1_pct: float = 100.0  # positions whose most likely token is the reference's

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    variant: str,
    runtime: str,
    reference: str,
    got: np.ndarray,
    want: np.ndarray,
    tolerance: Optional[float],
    example: Optional[int] = None,
    seq_len: Optional[int] = None,
    graph: str = "forward",
) -> Check:
    finite = bool(np.isfinite(got).all() and np.isfinite(want).all())
    diff = (
        float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        if finite
        else float("inf")
    )
    scale = float(np.abs(want).max()) if finite else float("inf")
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean() * 100) if finite else 0.0
    # a non-finite value on either side fails, whatever the tolerance: it never scales the bound
    passed = None if tolerance is None else finite and diff <= tolerance * max(1.0, scale)
    return Check(
        variant,
        runtime,
        reference,
        int(want.shape[0] if seq_len is None else seq_len),
        example,
        diff,
        diff / max(scale, 1e-30),
        passed,
        graph,
        top1,
    )


@dataclass
class Reference:
    name: str  # "examples", "torch", "transformers" or its logits recorded at export
    logits: list  # per case: [S, V], or None where this reference has no logits for it
    graded: bool  # False: shown as information only


class _Context:
    """What every check of one verify call shares."""

    def __init__(self, workspace, examples, tolerance, decoder_steps, on_check, on_note):
        # read and checked once per call, before any variant is built
        self.workspace, self.examples = workspace, load_examples(examples)
        self.tolerance = tolerance
        self.decoder_steps, self.on_check, self.on_note = decoder_steps, on_check, on_note
        self.checks: list[Check] = []
        self.notes: set[str] = set()

    def note(self, text: str) -> None:
        if text not in self.notes and self.on_note:
            self.on_note(text)
        self.notes.add(text)

    def record(self, checks: list[Check], path: Optional[Path] = None, **extra) -> None:
        for check in checks:
            self.checks.append(check)
            if self.on_check:
                self.on_check(check)
        if path is not None:
            _record_verification(
                self.workspace.out_dir, path, checks, self.tolerance, self.on_note, **extra
            )


def verify(
    workspace,
    variants: Iterable[str],
    runtimes: Iterable[str] = (REFERENCE, PORTABLE, FAST),
    decoder_runtimes: Iterable[str] = (),
    examples=None,
    tolerance: float = DEFAULT_TOLERANCE,
    on_check: Optional[Callable[[Check], None]] = None,
    on_note: Optional[Callable[[str], None]] = None,
    decoder_steps: Optional[int] = None,
    on_variant: Optional[Callable[[str], None]] = None,
) -> list[Check]:
    """Every check; results are recorded in the manifest where the folder allows it, and
    `on_note` hears when it does not (checking never needs write access).

    runtimes run the full forward; decoder_runtimes the decoder graph, fed each example as
    generation feeds it: its first half as the prompt, then one token per call; the logits at
    every fed position are compared. decoder_steps caps the one-token calls per example (the
    prompt grows to match): the longest example then still reaches its last position.

    References: eager torch of the same variant always; the examples for the spec's model; for a
    checkpoint directory, Hugging Face transformers' GPT2LMHeadModel loaded from it in float64
    (for the variants GPT-2 can express, when transformers is installed)."""
    ctx = _Context(workspace, examples, tolerance, decoder_steps, on_check, on_note)
    variants, runtimes, decoder_runtimes = list(variants), list(runtimes), list(decoder_runtimes)
    workspace.prepare(
        [(v, get_runtime(rt).forward_flavour) for v in variants for rt in runtimes]
        + [(v, get_runtime(rt).decoder_flavour) for v in variants for rt in decoder_runtimes]
    )
    for variant in variants:
        eager = workspace.model(variant)
        cases = example_cases(variant, ctx.examples)
        refs = _references(ctx, variant, eager, cases)
        for runtime in runtimes:
            if runtime == REFERENCE:
                ctx.record(_torch_against_references(variant, refs, ctx.tolerance))
            else:
                _check_forward(ctx, variant, runtime, eager, cases, refs)
        for runtime in decoder_runtimes:
            _check_decoder(ctx, variant, runtime, cases, refs)
        if on_variant:
            on_variant(variant)
    return ctx.checks


def _run_torch(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(ids)).numpy()


def _with_examples(variant: str) -> bool:
    """The examples are the spec's model's: another size only borrows their token ids."""
    return variant_size(variant) == DEFAULT_SIZE


def _references(ctx: _Context, variant: str, eager, cases: list) -> list[Reference]:
    """The references in the order rows are shown; torch is graded, the examples only for the
    spec's baseline, transformers wherever it runs."""
    refs = []
    if _with_examples(variant):
        examples = [ex.logits.numpy() for ex in ctx.examples]
        refs.append(Reference("examples", examples, variant == "baseline"))
    refs.append(Reference(REFERENCE, [_run_torch(eager, ids)[0] for ids in cases], True))
    if ctx.workspace.size is not None:  # a checkpoint directory: its independent reference
        from . import reference as hf

        run, note = hf.transformers_reference(ctx.workspace.weights, variant)
        if run is not None:
            refs.append(Reference("transformers", [run(ids)[0] for ids in cases], True))
        elif hf.reference_expressible(ctx.workspace.weights, variant):  # no transformers here
            recorded, recorded_note = hf.recorded_reference(ctx.workspace, variant, cases)
            if recorded is not None:
                refs.append(Reference(hf.RECORDED, recorded, True))
                note = recorded_note
        ctx.note(note)
    return refs


def _torch_against_references(variant: str, refs: list, tolerance: float) -> list[Check]:
    torch_out = next(r for r in refs if r.name == REFERENCE).logits
    return [
        compare(variant, REFERENCE, ref.name, out, want, tolerance if ref.graded else None, i)
        for ref in refs
        if ref.name != REFERENCE
        for i, (out, want) in enumerate(zip(torch_out, ref.logits))
        if want is not None
    ]


def _check_forward(ctx: _Context, variant: str, runtime: str, eager, cases, refs) -> None:
    spec = get_runtime(runtime)
    exact = spec.exact  # approximate by design: information only
    runner = build(runtime, "forward", ctx.workspace, variant)
    checks = []
    for i, ids in enumerate(cases):
        got = runner.run(ids)[0]
        for ref in (r for r in refs if r.logits[i] is not None):
            graded = ctx.tolerance if exact and ref.graded else None
            checks.append(compare(variant, runtime, ref.name, got, ref.logits[i], graded, i))
    vocab = get_variant(variant).config.vocab_size
    width = min(40, get_variant(variant).config.max_seq_len)
    batch_ids = np.random.default_rng(31).integers(0, vocab, (3, width), dtype=np.int64)  # B > 1
    checks.append(
        compare(
            variant,
            runtime,
            "torch (batch 3)",
            runner.run(batch_ids),
            _run_torch(eager, batch_ids),
            ctx.tolerance if exact else None,
            None,
            batch_ids.shape[1],
        )
    )
    path = ctx.workspace.artifact(variant, spec.forward_flavour) if spec.forward_flavour else None
    ctx.record(checks, path)


def _check_decoder(ctx: _Context, variant: str, runtime: str, cases, refs) -> None:
    spec = get_runtime(runtime)
    decoder = build(runtime, "decoder", ctx.workspace, variant)
    if not hasattr(decoder, "step"):
        raise PipelineError(
            f"runtime {runtime!r} runs its own generation loop: its logits cannot be checked "
            "step by step (pipeline all compares its tokens with torch's)"
        )
    checks = []
    for i, ids in enumerate(cases):
        seq_len = ids.shape[1]
        prompt = max(1, seq_len // 2, seq_len - (ctx.decoder_steps or seq_len))
        got = teacher_forced_logits(decoder, ids, prompt)[0]
        for ref in sorted(refs, key=lambda r: r.name != REFERENCE):  # the eager model first
            if ref.logits[i] is None:
                continue
            graded = ctx.tolerance if spec.exact and ref.graded else None
            want = ref.logits[i][prompt - 1 :]
            checks.append(
                compare(variant, runtime, ref.name, got, want, graded, i, seq_len, "decoder")
            )
    path = ctx.workspace.artifact(variant, spec.decoder_flavour) if spec.decoder_flavour else None
    steps = f" (at most {ctx.decoder_steps})" if ctx.decoder_steps else ""
    ctx.record(checks, path, mode="prompt, then one token per step" + steps)


def _record_verification(
    out_dir,
    path: Path,
    checks: list[Check],
    tolerance: float,
    on_note: Optional[Callable[[str], None]],
    **extra,
) -> None:
    """The graded checks' verdict in the manifest; a folder that cannot be written is a note."""
    graded = [c for c in checks if c.passed is not None]
    if not graded:
        return
    try:
        update_manifest(
            out_dir,
            path,
            {
                "verification": {
                    "passed": all(c.passed for c in graded),
                    "tolerance": tolerance,
                    "worst_max_abs": max(c.max_abs for c in graded),
                    "seq_lens": sorted({c.seq_len for c in graded}),
                    "against": sorted({c.reference for c in graded}),
                    **extra,
                }
            },
        )
    except PipelineError as exc:
        if on_note:
            on_note(f"results not recorded: {exc}")


def summarize(checks: list[Check]) -> list[dict]:
    """One row per (variant, runtime, reference): the worst case over the example lengths."""
    groups: dict[tuple, list[Check]] = {}
    for c in checks:
        groups.setdefault((c.variant, c.runtime, c.graph, c.reference), []).append(c)
    rows = []
    for (variant, runtime, graph, reference), cs in groups.items():
        graded = [c.passed for c in cs if c.passed is not None]
        rows.append(
            {
                "variant": variant,
                "runtime": runtime,
                "graph": graph,
                "reference": reference,
                "lengths": ",".join(str(c.seq_len) for c in cs),
                "max_abs": max(c.max_abs for c in cs),
                "max_rel": max(c.max_rel for c in cs),
                "top1_pct": min(c.top1_pct for c in cs),
                "passed": all(graded) if graded else None,
            }
        )
    return rows


def _verdict(passed: Optional[bool]) -> str:
    return "info" if passed is None else ("pass" if passed else "FAIL")


def check_table(checks: list[Check], details: bool = False) -> tuple[list[str], list[tuple]]:
    """(headers, rows): one row per check with details, else per variant/runtime/graph/reference."""
    if details:
        return (
            [
                "variant",
                "runtime",
                "graph",
                "vs",
                "example",
                "length",
                "max abs diff",
                "max rel diff",
                "top-1 %",
                "pass",
            ],
            [
                (
                    c.variant,
                    c.runtime,
                    c.graph,
                    c.reference,
                    c.example,
                    c.seq_len,
                    c.max_abs,
                    c.max_rel,
                    round(c.top1_pct, 1),
                    _verdict(c.passed),
                )
                for c in checks
            ],
        )
    return (
        [
            "variant",
            "runtime",
            "graph",
            "vs",
            "lengths",
            "worst abs diff",
            "worst rel diff",
            "top-1 %",
            "pass",
        ],
        [
            (
                r["variant"],
                r["runtime"],
                r["graph"],
                r["reference"],
                r["lengths"],
                r["max_abs"],
                r["max_rel"],
                round(r["top1_pct"], 1),
                _verdict(r["passed"]),
            )
            for r in summarize(checks)
        ],
    )


def verdict_lines(checks: list[Check], tolerance: float) -> tuple[str, list[str]]:
    """The closing line, and one line per failed check (which example, which length)."""
    graded = [c for c in checks if c.passed is not None]
    failed = [c for c in graded if not c.passed]
    closing = (
        f"{len(graded) - len(failed)} of {len(graded)} checks pass "
        f"(|diff| <= {tolerance:g} * max(1, max|reference|); 'info' rows are not graded)"
    )
    return closing, [
        f"FAIL: {c.variant} on {c.runtime} ({c.graph}) vs {c.reference}, example #{c.example} "
        f"(S={c.seq_len}): max |diff| {c.max_abs:.3g}"
        for c in failed
    ]
