"""GPT-2-like decoder: PyTorch model, ONNX export, ONNX Runtime verification and benchmarks.

Heavy modules (torch, onnx) load on first use, so `pipeline.parallel` workers and the CLI's
--help start quickly.
"""

from .config import BASE_CONFIG, VARIANTS, ModelConfig, Variant, get_variant
from .errors import PipelineError
from .version import __version__

__all__ = [
    "__version__",
    "load_model",
    "generate",
    "export_onnx",
    "BASE_CONFIG",
    "VARIANTS",
    "ModelConfig",
    "Variant",
    "get_variant",
    "PipelineError",
]


def load_model(variant: str = "baseline", weights=None, state_dict=None):
    """An eval-mode torch model of the variant: forward(LongTensor[B, S]) -> logits [B, S, V]."""
    from .api import load_model as _load

    return _load(variant, weights, state_dict)


def generate(variant: str, prompts, max_new_tokens: int, runtime: str = "ort-opt", **options):
    """Generate after each prompt (lists of token ids) with a KV cache; returns a GenerationResult
    whose .sequences are prompt + new tokens per row. Options: sampling=Sampling(...), weights,
    out_dir, threads, on_tokens(step, tokens)."""
    from .generation import generate as _generate

    return _generate(variant, prompts, max_new_tokens, runtime, **options)


def export_onnx(variant: str = "baseline", weights=None, out_dir="exported", opset: int = 18):
    """Export one variant to out_dir/<variant>.onnx and return its path."""
    from .export import export_onnx as _export

    return _export(variant, weights, out_dir, opset)
