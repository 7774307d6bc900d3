"""pipeline generate"""

from __future__ import annotations

import click

from ..errors import PipelineError
from ..runtime.registry import runtime_names
from .app import cli
from .generate_output import show_result, streamer
from .options import PositiveFinite, check_threads, out_opt, sized, weights_opt, workspace


def sampling_from(greedy, temperature, top_k, top_p, seed):
    from ..generation import Sampling

    given = [
        k
        for k, v in {"--temperature": temperature, "--top-k": top_k, "--top-p": top_p}.items()
        if v is not None
    ]
    if greedy and given:
        raise PipelineError(f"--greedy cannot be combined with {', '.join(given)}")
    if seed is not None and not given:
        raise PipelineError(
            "--seed makes sampling reproducible, and greedy decoding has no randomness: "
            "add --temperature, --top-k or --top-p to sample"
        )
    return Sampling(
        greedy=not given,
        temperature=temperature or 1.0,
        top_k=top_k,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
    )


@cli.command()
@sized
@click.option(
    "--variant", default="baseline", show_default=True, help="the variant to generate with"
)
@click.option(
    "--ids",
    "prompts",
    multiple=True,
    help="a prompt as comma-separated token ids; repeat for a batch (lengths may differ)",
)
@click.option(
    "--prompt",
    "texts",
    multiple=True,
    help="a prompt as text, encoded with the checkpoint's tokenizer (--weights DIR); repeat for "
    "a batch",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="at most this many tokens after each prompt",
)
@click.option(
    "--greedy",
    is_flag=True,
    help="pick the most likely token (the default unless a sampling option is given)",
)
@click.option(
    "--temperature", type=PositiveFinite(), default=None, help="sample at this temperature"
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="sample among the k most likely tokens",
)
@click.option(
    "--top-p",
    type=float,
    default=None,
    help="sample among the smallest set of tokens with this mass, in (0, 1]",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=None,
    help="make sampling reproducible",
)
@click.option(
    "--repetition-penalty",
    type=PositiveFinite(),
    default=1.0,
    help="divide the logits of tokens already in the row (multiply negative ones), as transformers",
)
@click.option(
    "--no-repeat-ngram-size",
    type=click.IntRange(min=0),
    default=0,
    help="never repeat an n-gram of this size (0: off)",
)
@click.option(
    "--min-new-tokens",
    type=click.IntRange(min=0),
    default=0,
    help="hold back the end-of-text id until this many new tokens",
)
@click.option(
    "--ignore-eos",
    is_flag=True,
    help="go on past the checkpoint's end-of-text id (by default a row ends there)",
)
@click.option(
    "--stop",
    "stops",
    multiple=True,
    help="end a row with the token that completes this text (kept); repeatable",
)
@click.option(
    "--num-beams",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="beam search over this many beams (instead of greedy decoding), as transformers",
)
@click.option(
    "--length-penalty",
    type=float,
    default=1.0,
    show_default=True,
    help="beam search: a finished hypothesis scores its log-probability / length ** this",
)
@click.option(
    "--early-stopping",
    is_flag=True,
    help="beam search: end once --num-beams hypotheses are finished (transformers' "
    "early_stopping=True; by default, once no running beam can beat them)",
)
@click.option(
    "--runtime",
    default="ort-opt",
    show_default=True,
    help=f"a runtime that runs the decoder ({', '.join(runtime_names('decoder'))}): ort the portable decoder, "
    "ort-opt the fused one, genai onnxruntime-genai's own loop",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="intra-op threads (default: the runtime's)",
)
@weights_opt
@out_opt
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of streaming")
def generate(
    variant,
    prompts,
    texts,
    max_new_tokens,
    greedy,
    temperature,
    top_k,
    top_p,
    seed,
    repetition_penalty,
    no_repeat_ngram_size,
    min_new_tokens,
    ignore_eos,
    stops,
    num_beams,
    length_penalty,
    early_stopping,
    runtime,
    threads,
    weights,
    out_dir,
    as_json,
) -> None:
    """Generate tokens after each prompt with a KV cache, streamed as they come."""
    from ..beam_search import Beams
    from ..config import get_variant
    from ..generation import generate as run_generate
    from ..generation_rules import Rules, checkpoint_eos_ids

    if threads is not None:
        check_threads([threads])
    if num_beams > 1 and greedy:
        raise PipelineError("--num-beams searches instead of greedy decoding: drop --greedy")
    sampling = sampling_from(greedy, temperature, top_k, top_p, seed)
    ws = workspace(out_dir, weights)
    cfg = get_variant(variant).config
    rows, text = prompt_rows(prompts, texts, ws.weights, cfg)
    # a beam's tokens are known only when the search ends: nothing to stream before
    stream = None if as_json or num_beams > 1 else streamer(len(rows), text)
    rules = Rules(
        repetition_penalty, no_repeat_ngram_size, min_new_tokens, checkpoint_eos_ids(ws.weights, cfg.vocab_size),
        ignore_eos, tuple(stops), None if text is None else text.decode,
    )  # fmt: skip
    result = run_generate(variant, rows, max_new_tokens, runtime, sampling, threads=threads,
                          on_tokens=stream, workspace=ws, rules=rules,
                          beams=Beams(num_beams, length_penalty, early_stopping))  # fmt: skip
    if hasattr(stream, "finish"):
        stream.finish()
    show_result(
        result, rows, text, texts, as_json, stand_in=ws.weights is None, streamed=bool(stream)
    )


def prompt_rows(prompts, texts, weights, cfg):
    """(token rows, the tokenizer or None): from --ids or from --prompt, never both."""
    from ..infer import parse_ids

    if bool(prompts) == bool(texts):
        raise PipelineError("give the prompts either as --ids or as --prompt text (one of them)")
    if prompts:
        return [parse_ids(p, cfg)[0].tolist() for p in prompts], None
    from ..text import load_text

    text = load_text(weights, cfg.vocab_size)
    return [text.encode(t, cfg.max_seq_len) for t in texts], text
