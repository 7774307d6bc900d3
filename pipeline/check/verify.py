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

from ..config import DEFAULT_SIZE, get_variant, size_of
from ..errors import PipelineError
from ..examples import load_examples
from ..export import update_manifest
from ..runtime.decoders import teacher_forced_logits
from ..runtime.registry import build, get_runtime

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
    graph: str = "forward"  # or "decoder": fed as generation feeds it

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
    )


class _Context:
    """What every check of one verify call shares."""

    def __init__(self, workspace, examples, tolerance, decoder_steps, on_check, on_note):
        self.workspace, self.cases, self.tolerance = workspace, load_examples(examples), tolerance
        self.decoder_steps, self.on_check, self.on_note = decoder_steps, on_check, on_note
        self.checks: list[Check] = []

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
    runtimes: Iterable[str] = ("torch", "ort", "ort-opt"),
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
    prompt grows to match): the longest example then still reaches its last position."""
    ctx = _Context(workspace, examples, tolerance, decoder_steps, on_check, on_note)
    for variant in variants:
        eager = workspace.model(variant)
        torch_out = [
            _run_torch(eager, ex.input_ids.numpy())[0] for ex in ctx.cases
        ]  # row 0 of batch 1
        for runtime in runtimes:
            if runtime == "torch":
                ctx.record(_torch_against_examples(ctx, variant, torch_out))
            else:
                _check_forward(ctx, variant, runtime, eager, torch_out)
        for runtime in decoder_runtimes:
            _check_decoder(ctx, variant, runtime, torch_out)
        if on_variant:
            on_variant(variant)
    return ctx.checks


def _run_torch(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(ids)).numpy()


def _with_examples(variant: str) -> bool:
    """The examples are the spec's model's: another size only borrows their token ids."""
    return size_of(get_variant(variant).config) == DEFAULT_SIZE


def _torch_against_examples(ctx: _Context, variant: str, torch_out: list) -> list[Check]:
    if not _with_examples(variant):
        return []
    graded = ctx.tolerance if variant == "baseline" else None
    return [
        compare(variant, "torch", "examples", out, ex.logits.numpy(), graded, i)
        for i, (ex, out) in enumerate(zip(ctx.cases, torch_out))
    ]


def _check_forward(ctx: _Context, variant: str, runtime: str, eager, torch_out: list) -> None:
    spec = get_runtime(runtime)
    tolerance = ctx.tolerance if spec.exact else None  # approximate by design: information only
    runner = build(runtime, "forward", ctx.workspace, variant)
    is_baseline, with_examples = variant == "baseline", _with_examples(variant)
    checks = []
    for i, (ex, out) in enumerate(zip(ctx.cases, torch_out)):
        got = runner.run(ex.input_ids.numpy())[0]
        if is_baseline:
            checks.append(
                compare(variant, runtime, "examples", got, ex.logits.numpy(), tolerance, i)
            )
        checks.append(compare(variant, runtime, "torch", got, out, tolerance, i))
        if not is_baseline and with_examples:
            checks.append(compare(variant, runtime, "examples", got, ex.logits.numpy(), None, i))
    vocab = get_variant(variant).config.vocab_size
    batch_ids = np.random.default_rng(31).integers(0, vocab, (3, 40), dtype=np.int64)  # batch B > 1
    checks.append(
        compare(
            variant,
            runtime,
            "torch (batch 3)",
            runner.run(batch_ids),
            _run_torch(eager, batch_ids),
            tolerance,
            None,
            batch_ids.shape[1],
        )
    )
    path = ctx.workspace.artifact(variant, spec.forward_flavour) if spec.forward_flavour else None
    ctx.record(checks, path)


def _check_decoder(ctx: _Context, variant: str, runtime: str, torch_out: list) -> None:
    spec = get_runtime(runtime)
    decoder = build(runtime, "decoder", ctx.workspace, variant)
    if not hasattr(decoder, "step"):
        raise PipelineError(
            f"runtime {runtime!r} runs its own generation loop: its logits cannot be checked "
            "step by step (pipeline all compares its tokens with torch's)"
        )
    tolerance = ctx.tolerance if spec.exact else None
    with_examples, checks = _with_examples(variant), []
    for i, (ex, want) in enumerate(zip(ctx.cases, torch_out)):
        prompt = max(1, ex.seq_len // 2, ex.seq_len - (ctx.decoder_steps or ex.seq_len))
        got = teacher_forced_logits(decoder, ex.input_ids.numpy(), prompt)[0]
        checks.append(
            compare(
                variant,
                runtime,
                "torch",
                got,
                want[prompt - 1 :],
                tolerance,
                i,
                ex.seq_len,
                "decoder",
            )
        )
        if with_examples:
            checks.append(
                compare(
                    variant,
                    runtime,
                    "examples",
                    got,
                    ex.logits.numpy()[prompt - 1 :],
                    tolerance if variant == "baseline" else None,
                    i,
                    ex.seq_len,
                    "decoder",
                )
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
