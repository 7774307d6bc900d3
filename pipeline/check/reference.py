"""The independent reference for a user's checkpoint: Hugging Face transformers' GPT-2, loaded
from the same directory in float64 (no network), with the variant's change applied to its config
where GPT-2's config can say it (LayerNorm eps, the 1/sqrt(h) scale, the GELU form)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import get_variant
from ..hf_gpt2 import gpt2_expressible

_MODELS: dict = {}


def transformers_reference(
    checkpoint: Path, variant: str
) -> tuple[Optional[Callable[[np.ndarray], np.ndarray]], str]:
    """(run ids [B, S] -> float64 logits [B, S, V], or None; a note saying what was used)."""
    cfg = get_variant(variant).config
    if not gpt2_expressible(cfg):
        return None, f"{variant}: GPT-2 cannot express this block; checked against eager torch"
    try:
        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None, (
            "transformers is not installed: the checkpoint's runtimes are checked against eager "
            "torch only (pip install transformers for the independent reference)"
        )
    key = (str(Path(checkpoint).resolve()), variant)
    if key not in _MODELS:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        config = GPT2Config.from_pretrained(checkpoint, local_files_only=True)
        config.layer_norm_epsilon = cfg.ln_eps
        config.scale_attn_weights = cfg.scale_attn
        tanh = config.activation_function in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
        if tanh != (cfg.gelu_approximate == "tanh"):
            config.activation_function = "gelu_new" if cfg.gelu_approximate == "tanh" else "gelu"
        model = GPT2LMHeadModel.from_pretrained(
            checkpoint,
            config=config,
            dtype=torch.float64,
            local_files_only=True,
            attn_implementation="eager",
        )
        _MODELS.clear()  # one model at a time: a 124M float64 copy is 1 GB
        _MODELS[key] = model.eval()
    model = _MODELS[key]

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids)).logits.numpy()

    return run, (
        f"reference: transformers {transformers.__version__} GPT2LMHeadModel from "
        f"{checkpoint} in float64"
    )
