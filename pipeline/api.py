"""The library's front door: build a variant's model with weights."""

from __future__ import annotations

from typing import Optional

import torch

from .config import ModelConfig, get_variant
from .model import GPT
from .weights import PathLike, load_state_dict, to_model_layout


def load_model(
    variant: str = "baseline",
    weights: Optional[PathLike] = None,
    state_dict: Optional[dict[str, torch.Tensor]] = None,
) -> GPT:
    """An eval-mode model of the variant: forward(LongTensor[B, S]) -> logits [B, S, V]. With a
    checkpoint directory as weights, the variant is built at the checkpoint's own shape."""
    from .errors import PipelineError
    from .sources import checkpoint_size

    if not isinstance(variant, str):
        raise PipelineError(f"variant must be a variant's name (a str), got {variant!r}")
    size = checkpoint_size(weights) if state_dict is None else None
    if size is not None and "@" not in variant:
        variant = f"{variant}@{size}"
    cfg = get_variant(variant).config
    return build_model(cfg, load_state_dict(weights, cfg) if state_dict is None else state_dict)


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> GPT:
    """A model of any config from a checked state dict in the supplied format (or the model's own)."""
    model = GPT(cfg)
    layout = to_model_layout(cfg, state_dict)
    # assign: the model holds the checked tensors themselves, not a second copy of the weights
    model.transformer.load_state_dict(
        {
            k.removeprefix("transformer."): v
            for k, v in layout.items()
            if k.startswith("transformer.")
        },
        strict=True,
        assign=True,
    )
    if not cfg.tied_head:
        model.lm_head = torch.nn.Parameter(layout["lm_head.weight"], requires_grad=False)
    return model.eval().requires_grad_(False)
