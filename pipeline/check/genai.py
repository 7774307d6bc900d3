"""onnxruntime-genai runs its own generation loop, so its logits cannot be checked step by step:
its greedy tokens are compared with eager torch's instead."""

from __future__ import annotations

import json
from collections.abc import Sequence

PROMPT = [[3, 14, 15, 92, 65, 35, 89, 79]]


def genai_agreement(workspace, variants: Sequence[str], new_tokens: int = 32) -> dict:
    """For each variant, whether greedy generation in genai gives eager torch's tokens."""
    from ..config import get_variant
    from ..generation import generate
    from ..runtime.registry import runtime_with

    def run(v, rt):  # the prompt's ids folded into a checkpoint's smaller vocabulary
        prompt = [[t % get_variant(v).config.vocab_size for t in PROMPT[0]]]
        return generate(v, prompt, new_tokens, rt, workspace=workspace).sequences

    def eos(v) -> int:
        config = workspace.genai_folder(v) / "genai_config.json"
        return json.loads(config.read_text())["model"]["eos_token_id"]

    loop, reference = runtime_with("own-loop"), runtime_with("reference")
    differ = [v for v in variants if not same_tokens(run(v, loop)[0], run(v, reference)[0], eos(v))]
    return {"new_tokens": new_tokens, "variants": list(variants), "differ": differ}


def same_tokens(genai: list[int], torch: list[int], eos: int) -> bool:
    """genai's sequence is torch's, or torch's up to an end-of-sequence id where genai stopped
    (genai ends there; our loops go on to the length asked)."""
    if genai == torch:
        return True
    return len(genai) < len(torch) and genai[-1] == eos and torch[: len(genai)] == genai


def agreement_line(result: dict) -> str:
    n, differ = len(result["variants"]), result["differ"]
    return (
        f"onnxruntime-genai: greedy {result['new_tokens']} tokens equal eager torch's for {n - len(differ)} "
        f"of {n} variants" + (f" (differ: {', '.join(differ)})" if differ else "")
    )
