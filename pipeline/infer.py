"""One forward pass and the top-k next tokens at the last position."""

from __future__ import annotations

import re
from typing import Optional

import numpy as np
import torch

from .config import get_variant
from .errors import PipelineError
from .examples import validate_ids
from .runtime.registry import build, resolve_runtimes
from .weights import PathLike
from .workspace import Workspace


def parse_ids(text: str, cfg=None) -> torch.Tensor:
    from .config import BASE_CONFIG

    cfg = cfg or BASE_CONFIG
    if not text.strip():
        raise PipelineError("--ids: empty sequence; give comma-separated token ids, e.g. 3,14,15")
    # commas, or blanks, between ids; an empty entry ('1,,2', a trailing comma) is refused, not
    # skipped: it is more likely a lost id than a separator typed twice
    parts = re.split(r"\s*,\s*|\s+", text.strip())
    if "" in parts:
        raise PipelineError(f"--ids: {text!r} has an empty entry; give ids such as 3,14,15")
    # plain ASCII digits only: int() also takes "1_0" (10) and "٣" (3), and "²" passes isdigit()
    bad = next((p for p in parts if not re.fullmatch(r"-?[0-9]+", p)), None)
    if bad is not None:
        raise PipelineError(f"--ids: {bad!r} is not an integer token id")
    values = [int(p) for p in parts]
    # range first, in Python ints: a 23-digit id would otherwise overflow int64 with torch's message
    bad = next((v for v in values if not 0 <= v < cfg.vocab_size), None)
    if bad is not None:
        shown = str(bad) if len(str(bad)) <= 24 else f"{str(bad)[:20]}... ({len(str(bad))} digits)"
        raise PipelineError(f"--ids: token id {shown} is outside [0, {cfg.vocab_size - 1}]")
    return validate_ids(torch.tensor(values, dtype=torch.int64), cfg, what="--ids")


def infer(
    ids: torch.Tensor,
    variant: str = "baseline",
    runtime: str = "ort",
    top_k: int = 5,
    weights: Optional[PathLike] = None,
    out_dir: PathLike = "exported",
    workspace: Optional[Workspace] = None,
) -> dict:
    """The top-k next tokens after ids [1, S] in any runtime that runs the full forward."""
    cfg = get_variant(variant).config
    if not 1 <= top_k <= cfg.vocab_size:
        raise PipelineError(
            f"--top-k must be in [1, {cfg.vocab_size}] (the vocabulary), got {top_k}"
        )
    resolve_runtimes(runtime, "forward")
    runner = build(runtime, "forward", workspace or Workspace(out_dir, weights), variant)
    logits = runner.run(validate_ids(ids, cfg).numpy())
    bad = ~np.isfinite(logits[0]).all(axis=-1)
    if bad.any():
        raise PipelineError(
            f"{runtime} returned non-finite logits at position {int(np.argmax(bad))}: the "
            "weights overflow float32 somewhere in the model"
        )
    last = logits[0, -1].astype(np.float64)
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    order = np.argsort(-last, kind="stable")[: min(top_k, last.size)]
    return {
        "variant": variant,
        "runtime": runtime,
        "logits_shape": list(logits.shape),
        "top_k": [
            {"token": int(t), "logit": float(last[t]), "prob": float(probs[t])} for t in order
        ],
    }
