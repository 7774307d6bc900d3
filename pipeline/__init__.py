"""GPT-2-like decoder: PyTorch model, ONNX export, ONNX Runtime verification and benchmarks."""
from .api import load_model
from .config import BASE_CONFIG, VARIANTS, ModelConfig, Variant, get_variant
from .errors import PipelineError


def export_onnx(variant: str = "baseline", weights=None, out_dir="exported", opset: int = 18):
    """Export one variant to out_dir/<variant>.onnx and return its path."""
    from .export import export_onnx as _export

    return _export(variant, weights, out_dir, opset)


__all__ = ["load_model", "export_onnx", "BASE_CONFIG", "VARIANTS", "ModelConfig", "Variant",
           "get_variant", "PipelineError"]
