"""The main job (`pipeline all`) as library functions: export every variant, record the
references, verify, check generation in onnxruntime-genai, then measure and report. The CLI
prints what these return; a library user calls `main_job` and reads the same."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import VARIANTS
from .runtime.registry import get_runtime, runtime_names

# the portable decoders (for ONNX tools other than ORT) are left to `pipeline export --decoder`:
# they trace slowest, and would take a fifth of the three minutes the main job has
FLAVOURS = ("portable", "optimized", "decoder-optimized")
DECODER_STEPS = 64  # the decoders' last 64 positions one token per call


@dataclass
class Verified:
    """What export and verification found."""

    variants: list[str]
    checks: list  # check.verify.Check
    notes: list[str]
    genai: dict  # check.genai.genai_agreement

    @property
    def passed(self) -> bool:
        graded = [c for c in self.checks if c.passed is not None]
        return all(c.passed for c in graded) and not self.genai["differ"]


@dataclass
class MainJob:
    verified: Verified
    report: Optional[Path] = None  # report.md (None: verification failed, nothing measured)
    results: Optional[dict] = None  # what report.json holds


def checked_runtimes() -> tuple[list[str], list[str]]:
    """(full-forward runtimes, decoder runtimes) the main job verifies: every default forward
    runtime, and the decoders whose graph it exports."""
    forward = runtime_names("forward", default_only=True)
    decoder = [
        r
        for r in runtime_names("decoder", default_only=True)
        if get_runtime(r).decoder_flavour in FLAVOURS
    ]
    return forward, decoder


def export_all(workspace, on_exported: Optional[Callable[..., None]] = None) -> list[str]:
    """Every variant (at the workspace's size) exported in FLAVOURS with its genai folder;
    returns the variants' names."""
    from .export.artifacts import export_artifacts

    names = [workspace.sized(v) for v in VARIANTS]
    export_artifacts(workspace, names, FLAVOURS, genai=True, on_done=on_exported)
    return names


def verify_all(
    workspace, names, examples=None, on_verified: Optional[Callable[..., None]] = None
) -> Verified:
    """The exported variants checked against their references in every runtime the main job
    checks (checked_runtimes), and genai's greedy tokens against torch's."""
    from .check.genai import genai_agreement
    from .check.reference import record_references
    from .check.verify import verify

    record_references(workspace, names, examples)
    forward, decoder = checked_runtimes()
    notes: list[str] = []
    checks = verify(
        workspace,
        names,
        forward,
        decoder,
        examples,
        on_note=notes.append,
        decoder_steps=DECODER_STEPS,
        on_variant=on_verified,
    )
    return Verified(names, checks, list(dict.fromkeys(notes)), genai_agreement(workspace, names))


def measure_and_report(
    workspace,
    examples=None,
    full: bool = False,
    on_step: Optional[Callable[[str], None]] = None,
    text_file=None,
) -> tuple[Path, dict]:
    """report.json, report.md and its plots (full: the dense sweeps, about 4 minutes more)."""
    from .report import build_report
    from .report.collect import Sizes

    return build_report(workspace, examples, Sizes(full=full), on_step=on_step, text_file=text_file)


def main_job(
    workspace,
    examples=None,
    full: bool = False,
    on_exported: Optional[Callable[..., None]] = None,
    on_verified: Optional[Callable[..., None]] = None,
    on_step: Optional[Callable[[str], None]] = None,
) -> MainJob:
    """export_all and verify_all, then (only if everything passed) measure_and_report."""
    verified = verify_all(workspace, export_all(workspace, on_exported), examples, on_verified)
    if not verified.passed:
        return MainJob(verified)
    report, results = measure_and_report(workspace, examples, full, on_step)
    return MainJob(verified, report, results)
