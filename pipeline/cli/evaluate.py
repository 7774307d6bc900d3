"""pipeline eval"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PipelineError
from ..fileio import check_writable_file, json_text, write_text_atomic
from ..runtime.registry import runtime_names
from .app import cli
from .options import check_threads, out_opt, progress, sized, text_file_opt, weights_opt, workspace

DEFAULT_RUNTIMES = "torch,ort,ort-opt,ort-int8,ort-int4"


@cli.command(name="eval")
@sized
@text_file_opt(
    "UTF-8 text to score, encoded with the checkpoint's tokenizer (--weights DIR)",
)
@click.option(
    "--ids-file",
    type=click.Path(path_type=Path),
    default=None,
    help="token ids to score instead (comma- or space-separated)",
)
@click.option("--variant", default="baseline", show_default=True, help="the variant to score")
@click.option(
    "--runtime",
    default=DEFAULT_RUNTIMES,
    show_default=True,
    help="comma-separated runtimes: a name scores its full forward "
    f"({', '.join(runtime_names('forward'))}); NAME-decoder its decoder fed token by token as "
    f"generation feeds it ({', '.join(runtime_names('decoder'))}; genai alone is genai's loop)",
)
@click.option(
    "--recipe",
    "recipes",
    default="",
    help="comma-separated weight recipes to score beside the runtimes: the ORT-optimised graph "
    "quantized by each (docs/quality.md lists them; GPTQ needs --calibration-file)",
)
@text_file_opt(
    "UTF-8 text a calibrated recipe (GPTQ) fits its weights on; keep it apart from the scored text",
    "--calibration-file",
)
@click.option(
    "--window",
    type=click.IntRange(min=2),
    default=None,
    help="tokens per window (default: the model's context)",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="tokens each window moves on (default: half the window); each scores only its new ones",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="intra-op threads (default: the runtime's)",
)
@weights_opt
@out_opt
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="write every runtime's scores as JSON",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="draw each runtime's perplexity change and KL against its tokens/s as a PNG",
)
def evaluate(text_file, ids_file, variant, runtime, recipes, calibration_file, window, stride,
             threads, weights, out_dir, json_path, plot_path) -> None:  # fmt: skip
    """Perplexity, KL and top-1 agreement of each runtime on a text, against the exact reference
    (transformers' float64 for a checkpoint, else eager torch), over sliding windows."""
    from ..check.quality import eval_rows, eval_runners, evaluate, split_runtimes, text_ids, windows
    from ..config import get_variant
    from ..table import text_table

    if (text_file is None) == (ids_file is None):
        raise PipelineError("give the text either as --text-file or as --ids-file (one of them)")
    if threads is not None:
        check_threads([threads])
    check_writable_file(json_path, "--json")
    check_writable_file(plot_path, "--plot")
    recipe_names = _recipe_names(recipes, calibration_file)
    ws, cfg = workspace(out_dir, weights), get_variant(variant).config
    ids = text_ids(ws, variant, text_file, ids_file)
    calibration_ids = None
    if calibration_file is not None:
        calibration_ids = text_ids(ws, variant, text_file=calibration_file)
    window = min(window or cfg.max_seq_len, cfg.max_seq_len)
    stride = stride or max(1, window // 2)
    spans = windows(len(ids), window, stride)  # bad lengths refused before any export
    names, decoders = split_runtimes(runtime) if runtime.strip() else ([], [])
    if not (names or decoders or recipe_names):
        raise PipelineError("nothing to score: name a --runtime or a --recipe")
    reference, note, runners = eval_runners(
        ws, variant, names, window, threads, recipe_names, calibration_ids,
        on_prepare=lambda name: click.echo(f"preparing: {name}", err=True), decoders=decoders,
    )  # fmt: skip
    with progress(len(spans), "scoring windows") as advance:
        ref, scores = evaluate(ids, runners, reference, window, stride,
                               on_window=lambda i, n: advance(f"window {i}"))  # fmt: skip
    click.echo(text_table(*eval_rows(ref, scores, note)))
    click.echo(
        f"{ref.tokens} tokens scored in {len(spans)} windows of {window} (stride {stride}); "
        f"KL is KL(p_reference || p_runtime) per token"
    )
    rows = [s.to_dict(ref) for s in scores]
    if plot_path:
        from ..report.plots import plot_quality

        plot_quality(rows, plot_path, f"{variant} on {Path(text_file or ids_file).name}")
        click.echo(f"wrote {plot_path}")
    if json_path:
        _write_json(json_path, variant, ws, note, ref, window, stride, recipe_names,
                    calibration_file, threads, rows)  # fmt: skip


def _recipe_names(recipes: str, calibration_file) -> list[str]:
    """--recipe's names, each known, a calibrated one only with a text to calibrate on."""
    from ..export.weight_recipes import get_recipe

    names = [r.strip() for r in recipes.split(",") if r.strip()]
    for name in names:
        if get_recipe(name).calibrated and calibration_file is None:
            raise PipelineError(
                f"recipe {name} calibrates on text: give --calibration-file (a text apart from "
                "the one scored)"
            )
    return names


def _write_json(json_path, variant, ws, note, ref, window, stride, recipe_names, calibration_file,
                threads, rows) -> None:  # fmt: skip
    from ..export.weight_recipes import get_recipe
    from ..measure.harness import machine

    data = {
        "machine": machine((threads or 1,)),  # what the tokens/s were measured on
        "variant": variant,
        "weights": None if ws.weights is None else str(ws.weights),
        "reference": {"note": note, **ref.to_dict()},
        "window": window,
        "stride": stride,
        "recipes": {n: get_recipe(n).to_dict() for n in recipe_names},
        "calibration_file": None if calibration_file is None else str(calibration_file),
        "tokens_scored": ref.tokens,
        "runtimes": rows,
    }
    write_text_atomic(json_path, json_text(data))
    click.echo(f"wrote {json_path}")
