"""pipeline infer"""

from __future__ import annotations

import click

from ..fileio import json_text
from ..runtime.registry import runtime_names
from .app import cli
from .options import out_opt, sized, weights_opt, workspace


@cli.command()
@sized
@click.option("--ids", required=True, help="comma-separated token ids, e.g. 3,14,15")
@click.option("--variant", default="baseline", show_default=True)
@click.option(
    "--runtime",
    default="ort",
    show_default=True,
    help=f"a runtime that runs the full forward ({', '.join(runtime_names('forward'))})",
)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@weights_opt
@out_opt
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def infer(ids, variant, runtime, top_k, weights, out_dir, as_json) -> None:
    """Run one forward pass and show the top-k next tokens."""
    from ..config import get_variant
    from ..infer import infer as run_infer
    from ..infer import parse_ids

    token_ids = parse_ids(ids, get_variant(variant).config)
    result = run_infer(token_ids, variant, runtime, top_k, workspace=workspace(out_dir, weights))
    if as_json:
        click.echo(json_text(result), nl=False)
        return
    click.echo(f"{variant} on {runtime}: logits shape {result['logits_shape']}; next token:")
    for rank, t in enumerate(result["top_k"], 1):
        click.echo(f"  {rank}. token {t['token']:3d}  logit {t['logit']:8.3f}  p {t['prob']:.4f}")
