"""pipeline infer"""

from __future__ import annotations

import click

from ..fileio import json_text
from ..runtime.registry import runtime_names
from .app import cli
from .options import out_opt, sized, weights_opt, workspace


@cli.command()
@sized
@click.option("--ids", default=None, help="comma-separated token ids, e.g. 3,14,15")
@click.option(
    "--text",
    default=None,
    help="the input as text, encoded with the checkpoint's tokenizer (--weights DIR)",
)
@click.option("--variant", default="baseline", show_default=True, help="the variant to run")
@click.option(
    "--runtime",
    default="ort",
    show_default=True,
    help=f"a runtime that runs the full forward ({', '.join(runtime_names('forward'))})",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="how many next tokens to show",
)
@weights_opt
@out_opt
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def infer(ids, text, variant, runtime, top_k, weights, out_dir, as_json) -> None:
    """Run one forward pass and show the top-k next tokens."""
    import torch

    from ..config import get_variant
    from ..errors import PipelineError
    from ..infer import infer as run_infer
    from ..infer import parse_ids

    if (ids is None) == (text is None):
        raise PipelineError("give the input either as --ids or as --text (one of them)")
    ws, cfg = workspace(out_dir, weights), get_variant(variant).config
    tokenizer = None
    if text is not None:
        from ..text import load_text

        tokenizer = load_text(ws.weights, cfg.vocab_size)
        token_ids = torch.tensor([tokenizer.encode(text, cfg.max_seq_len, "--text")])
    else:
        token_ids = parse_ids(ids, cfg)
    result = run_infer(token_ids, variant, runtime, top_k, workspace=ws)
    if tokenizer is not None:
        for t in result["top_k"]:
            t["text"] = tokenizer.token_text(t["token"])
    if as_json:
        click.echo(json_text(result), nl=False)
        return
    click.echo(f"{variant} on {runtime}: logits shape {result['logits_shape']}; next token:")
    for rank, t in enumerate(result["top_k"], 1):
        shown = f"  {t['text']!r}" if "text" in t else ""
        click.echo(
            f"  {rank}. token {t['token']:3d}{shown}  logit {t['logit']:8.3f}  p {t['prob']:.4f}"
        )
