"""The independent reference for a user's checkpoint: Hugging Face transformers' own class for its
model_type (GPT2LMHeadModel, LlamaForCausalLM, ...), loaded from the same directory in float64
(no network), with the variant's change applied to its config where that config can say it
(the norm's eps; GPT-2's 1/sqrt(h) scale and GELU form; Mistral's window).

Its logits are also recorded at export (`<variant>.reference.safetensors` beside the graphs), so
that `verify` on a machine without transformers still checks the runtimes against them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import get_variant
from ..fileio import atomic_path

_MODELS: dict = {}


def reference_expressible(checkpoint: Path, variant: str) -> bool:
    """Whether transformers' own class for the checkpoint can compute the variant."""
    from ..hf_checkpoint import reference_overrides

    return reference_overrides(Path(checkpoint), get_variant(variant).config) is not None


def transformers_reference(
    checkpoint: Path, variant: str
) -> tuple[Optional[Callable[[np.ndarray], np.ndarray]], str]:
    """(run ids [B, S] -> float64 logits [B, S, V], or None; a note saying what was used)."""
    from ..hf_checkpoint import model_type, reference_overrides

    overrides = reference_overrides(Path(checkpoint), get_variant(variant).config)
    if overrides is None:
        return None, (
            f"{variant}: {model_type(Path(checkpoint))}'s config cannot express this block; "
            "checked against eager torch"
        )
    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None, (
            "transformers is not installed: the checkpoint's runtimes are checked against eager "
            "torch only (pip install transformers for the independent reference)"
        )
    key = (str(Path(checkpoint).resolve()), variant)
    if key not in _MODELS:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        _MODELS.clear()  # one model at a time: a 124M float64 copy is 1 GB
        config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
        for name, value in overrides.items():
            setattr(config, name, value)
        model = AutoModelForCausalLM.from_pretrained(
            checkpoint,
            config=config,
            dtype=torch.float64,
            local_files_only=True,
            attn_implementation="eager",
        )
        _MODELS[key] = model.eval()
    model = _MODELS[key]

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(ids)).logits.numpy()

    return run, (
        f"reference: transformers {transformers.__version__} {type(model).__name__} from "
        f"{checkpoint} in float64"
    )


# the recorded logits stay under this many bytes: the examples are taken shortest first (GPT-2
# 124M's vocabulary makes the 1024-token example alone 200 MB of float32)
RECORD_BUDGET_BYTES = 64 * 2**20
RECORDED = "transformers (recorded at export)"


def reference_path(workspace, variant: str) -> Path:
    return Path(workspace.out_dir) / f"{variant}.reference.safetensors"


def record_reference(workspace, variant: str, cases: list[np.ndarray]) -> Optional[Path]:
    """transformers' float64 logits for the cases (ids [1, S] each), stored as float32 beside the
    graphs with the weights' hash; None when transformers is missing or the checkpoint's class
    cannot express the variant (nothing independent to record). Kept while the weights and cases
    are the same."""
    from safetensors.numpy import save_file

    from ..weights import weights_sha256

    path = reference_path(workspace, variant)
    sha = weights_sha256(workspace.weights)
    if _recorded_meta(path).get("weights_sha256") == sha:
        return path
    run, note = transformers_reference(workspace.weights, variant)
    if run is None:
        return None
    vocab, tensors, used = get_variant(variant).config.vocab_size, {}, 0
    for i in sorted(range(len(cases)), key=lambda i: cases[i].shape[1]):
        used += cases[i].shape[1] * vocab * 4
        if used > RECORD_BUDGET_BYTES and tensors:
            break
        tensors[f"ids_{i}"] = np.ascontiguousarray(cases[i])
        tensors[f"logits_{i}"] = run(cases[i])[0].astype(np.float32)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"weights_sha256": sha, "note": note})
    return path


def record_references(workspace, variants, examples=None) -> list[Path]:
    """The reference of each variant of a checkpoint that its own class can express, on the cases verify
    feeds it (nothing for the spec's format, whose examples are its recorded reference)."""
    from ..examples import example_cases

    if workspace.size is None:
        return []
    paths = (
        record_reference(workspace, v, example_cases(v, examples))
        for v in variants
        if reference_expressible(workspace.weights, v)
    )
    return [p for p in paths if p is not None]


def _recorded_meta(path: Path) -> dict:
    from safetensors import safe_open

    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), "numpy") as f:
            return f.metadata() or {}
    except Exception:  # a damaged file is recorded again, never trusted
        return {}


def recorded_reference(workspace, variant: str, cases: list[np.ndarray]):
    """(per case: the logits [S, V] recorded at export for these ids, or None; a note), or
    (None, None) when nothing was recorded for these weights."""
    from safetensors.numpy import load_file

    from ..weights import weights_sha256

    path = reference_path(workspace, variant)
    meta = _recorded_meta(path)
    if meta.get("weights_sha256") != weights_sha256(workspace.weights):
        return None, None
    stored = load_file(str(path))
    logits = [
        stored[f"logits_{i}"]
        if f"ids_{i}" in stored and np.array_equal(stored[f"ids_{i}"], ids)
        else None
        for i, ids in enumerate(cases)
    ]
    if all(x is None for x in logits):
        return None, None
    kept = sum(x is not None for x in logits)
    return logits, (
        f"transformers is not installed here: the runtimes are checked against its logits "
        f"recorded at export in {path} ({meta.get('note', '').removeprefix('reference: ')}; "
        f"{kept} of {len(cases)} examples)"
    )
