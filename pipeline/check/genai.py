"""onnxruntime-genai runs its own generation loop, so its logits cannot be checked step by step:
its greedy tokens are compared with eager torch's instead."""

from __future__ import annotations

from collections.abc import Sequence

PROMPT = [[3, 14, 15, 92, 65, 35, 89, 79]]


def genai_agreement(workspace, variants: Sequence[str], new_tokens: int = 32) -> dict:
    """For each variant, whether greedy generation in genai gives eager torch's tokens."""
    from ..config import get_variant
    from ..generate import generate

    def run(v, rt):  # the prompt's ids folded into a checkpoint's smaller vocabulary
        prompt = [[t % get_variant(v).config.vocab_size for t in PROMPT[0]]]
        return generate(v, prompt, new_tokens, rt, workspace=workspace).sequences

    differ = [v for v in variants if run(v, "genai") != run(v, "torch")]
    return {"new_tokens": new_tokens, "variants": list(variants), "differ": differ}


def agreement_line(result: dict) -> str:
    n, differ = len(result["variants"]), result["differ"]
    return (
        f"onnxruntime-genai: greedy {result['new_tokens']} tokens equal eager torch's for {n - len(differ)} "
        f"of {n} variants" + (f" (differ: {', '.join(differ)})" if differ else "")
    )
