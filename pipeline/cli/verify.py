"""pipeline verify"""

from __future__ import annotations

import sys

import click

from ..errors import PipelineError
from ..runtime.registry import ALIASES, checked_decoders, resolve_runtimes, runtime_names
from .app import cli
from .options import (
    VARIANT_HELP,
    PositiveFinite,
    examples_opt,
    out_opt,
    progress,
    sized,
    text_file_opt,
    variant_names,
    weights_opt,
    workspace,
)


def runtime_selection(text: str) -> tuple[list[str], list[str]]:
    """--runtime -> (full-forward runtimes, decoder runtimes): registry names, 'ort' (both ORT
    files), 'decoder' (both ORT decoders), '<name>-decoder', 'all' and 'all+int8'."""
    forward, decoder = [], []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in ("all", "all+int8"):
            forward += runtime_names("forward", default_only=part == "all")
            decoder += checked_decoders()
        elif part == "decoder":
            decoder += checked_decoders()
        elif part.endswith("-decoder"):
            decoder += resolve_runtimes(part.removesuffix("-decoder"), "decoder")
        else:
            forward += resolve_runtimes(part, "forward", ALIASES["forward"])
    if not forward and not decoder:
        raise PipelineError(f"--runtime: no runtime named in {text!r}")
    return list(dict.fromkeys(forward)), list(dict.fromkeys(decoder))


def run_verify(
    ws, names, runtime: str, examples, tolerance, details=False, decoder_steps=None
) -> bool:
    """Verify and print; True when every graded check passes (pipeline all calls it too)."""
    from ..check.verify import verify

    forward, decoder = runtime_selection(runtime)
    notes: list[str] = []
    with progress(len(names), "verifying") as advance:
        checks = verify(
            ws,
            names,
            forward,
            decoder,
            examples,
            tolerance,
            on_note=notes.append,
            decoder_steps=decoder_steps,
            on_variant=advance,
        )
    return show_checks(checks, notes, tolerance, details)


def show_checks(checks, notes, tolerance, details=False) -> bool:
    """The table, the closing line, the failures and notes; True when every graded check passes."""
    from ..check.verify import check_table, verdict_lines
    from ..table import text_table

    click.echo(text_table(*check_table(checks, details)))
    if not any(c.passed is not None for c in checks):  # "0 of 0 checks pass" is no pass
        shown = ", ".join(sorted({c.runtime for c in checks})) or "no runtime"
        click.echo(
            f"error: nothing was graded: {shown} ran only as approximate runtimes ('info' rows, "
            "never graded); add an exact one (torch, ort, ort-opt) to check the logits",
            err=True,
        )
        return False
    closing, failures = verdict_lines(checks, tolerance)
    click.echo("\n" + closing)
    for line in failures if not details else []:  # the summary's rows do not say which example
        click.echo(line, err=True)
    for note in dict.fromkeys(notes):
        click.echo(f"note: {note}", err=True)
    return not failures


def check_text_file(text_file, ws=None) -> None:
    """A bad --text-file (or one the checkpoint's tokenizer cannot read) refused before any work."""
    if text_file is None:
        return
    from ..check.quality import read_text_file, text_ids

    read_text_file(text_file)
    if ws is not None:
        text_ids(ws, ws.sized("baseline"), text_file, ids_option="`pipeline eval --ids-file`")


def show_text_quality(ws, names, runtimes, text_file) -> None:
    """Each variant's full-forward runtimes scored on the text as `pipeline eval` does (the
    model's context per window, stride half of it): a fusion or a quantization that drifts shows
    as a perplexity change, a KL and a top-1 agreement below 100%."""
    from ..check.quality import quality_rows, score_text_file, text_ids, windows
    from ..config import get_variant
    from ..table import text_table

    table, tokens = [], 0
    for variant in names:
        window = get_variant(variant).config.max_seq_len
        ids = text_ids(ws, variant, text_file=text_file)
        n = len(windows(len(ids), window, window // 2))
        with progress(n, f"scoring {variant} on the text") as advance:
            record = score_text_file(ws, variant, text_file, runtimes,
                                     on_window=lambda i, n: advance(), ids=ids)  # fmt: skip
        headers, rows = quality_rows(record)
        table += [[variant, *row] for row in rows]
        tokens = record["tokens_scored"]
    click.echo(f"\non {text_file} ({tokens} tokens scored; eval's windows):")
    click.echo(text_table(["variant", *headers], table))


@cli.command()
@sized
@click.option("--variant", default="all", show_default=True, help=VARIANT_HELP)
@click.option(
    "--runtime",
    default="all",
    show_default=True,
    help="comma-separated runtimes that run the full forward, 'ort' (both ORT files), 'decoder' (both ORT "
    "decoders, fed as generation feeds them), 'all' (torch, ort, ort-opt and the decoders) or "
    "'all+int8'",
)
@weights_opt
@examples_opt
@out_opt
@click.option(
    "--tolerance", type=PositiveFinite(), default=1e-4, show_default=True, help="relative tolerance"
)
@click.option(
    "--details", is_flag=True, help="one row per check (every example) instead of the worst case"
)
@click.option(
    "--summary",
    is_flag=True,
    hidden=True,
    help="the default: one row per variant/runtime/reference",
)
@text_file_opt(
    "also score the full-forward runtimes on this UTF-8 text as `pipeline eval` does "
    "(perplexity change, KL, top-1), encoded with the checkpoint's tokenizer",
)
def verify(variant, runtime, weights, examples, out_dir, tolerance, details, summary,
           text_file) -> None:  # fmt: skip
    """Check the runtimes' logits against the examples and against eager torch."""
    ws, names = workspace(out_dir, weights), variant_names(variant)
    check_text_file(text_file, ws)
    passed = run_verify(ws, names, runtime, examples, tolerance, details)
    forward = runtime_selection(runtime)[0]
    if text_file is not None and forward:
        show_text_quality(ws, names, forward, text_file)
    if not passed:
        sys.exit(1)
