"""pipeline export"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from .app import cli
from .options import VARIANT_HELP, out_opt, progress, sized, variant_names, weights_opt, workspace

# option -> the flavours it adds beside the portable file
FLAVOUR_OPTIONS = {
    "optimize": ["optimized"],
    "decoder": ["decoder", "decoder-optimized"],
}
# --quantize Q: the full forward's flavour, and the decoder's with --decoder
QUANTIZED = {"int8": ("int8", "decoder-int8"), "int4": ("int4", "decoder-int4")}


@cli.command()
@sized
@click.option("--variant", default="baseline", show_default=True, help=VARIANT_HELP)
@weights_opt
@out_opt
@click.option(
    "--opset",
    type=click.IntRange(18, 25),
    default=18,
    show_default=True,
    help="ONNX opset, 18 to 25 (the range that exports and runs with these versions)",
)
@click.option(
    "--optimize",
    is_flag=True,
    help="also write OUT/<variant>.ort-opt.onnx: fused causal attention, ONNX Runtime only",
)
@click.option(
    "--quantize",
    type=click.Choice(list(QUANTIZED)),
    default=None,
    help="also write OUT/<variant>.int8.onnx (dynamic int8 matmuls) or .int4.onnx (4-bit weights); "
    "with --decoder also .decoder.int8.onnx / .decoder.int4.onnx (8- or 4-bit weights)",
)
@click.option(
    "--decoder",
    is_flag=True,
    help="also write the decoders with a KV cache (OUT/<variant>.decoder.onnx, .decoder.ort-opt.onnx) "
    "and the onnxruntime-genai folder OUT/<variant>.genai/",
)
@click.option(
    "--force", is_flag=True, help="export every file again, even those that are up to date"
)
@click.option(
    "--external-data",
    is_flag=True,
    help="write each file as a pair, the graph and its weights in <file>.data beside it (always "
    "done past ONNX's 2 GiB limit)",
)
def export(
    variant: str,
    weights,
    out_dir: Path,
    opset: int,
    optimize: bool,
    quantize,
    decoder: bool,
    force: bool,
    external_data: bool,
) -> None:
    """Write OUT/<variant>.onnx for each variant (self-contained, dynamic batch and sequence axes).
    A file whose variant, flavour, config, weights, opset, version and bytes all match is kept."""
    from ..check.reference import record_references
    from ..export.artifacts import export_artifacts, export_plan, size_on_disk

    names = variant_names(variant)
    chosen = {"optimize": optimize, "decoder": decoder}
    flavours = ["portable"] + [
        f for option, fs in FLAVOUR_OPTIONS.items() if chosen[option] for f in fs
    ]
    if quantize:
        forward, decoded = QUANTIZED[quantize]
        flavours += [forward] + ([decoded] if decoder else [])
    ws = workspace(out_dir, weights)
    reasons = export_plan(ws, names, flavours, opset)
    written = {p.name for p, reason in reasons.items() if force or reason is not None}
    quiet = contextlib.nullcontext(lambda *done: None)
    with progress(len(written), "exporting") if written else quiet as progressed:
        # progress for the files written, not for those kept as they are
        advance = lambda name: progressed(name) if name in written else None  # noqa: E731
        paths = export_artifacts(
            ws,
            names,
            flavours,
            opset,
            genai=decoder,
            on_done=advance,
            keep_current=not force,
            external_data=external_data,
        )
    for p in paths:
        click.echo(f"{p}  ({size_on_disk(p) / 1e6:.1f} MB{_status(p, reasons, force)})")
    for p in record_references(ws, names):
        click.echo(f"{p}  (transformers' logits, for verify where transformers is not installed)")


def _status(path: Path, reasons: dict, force: bool) -> str:
    if path not in reasons:  # the genai folder: rebuilt when its decoder changed
        return ""
    reason = reasons[path]
    if reason is None:
        return ", exported again: --force" if force else ", up to date, kept"
    return ", new" if reason == "missing" else f", exported again: {reason}"
