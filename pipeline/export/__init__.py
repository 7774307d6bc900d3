from .onnx_export import (ensure_export, export_onnx, export_variants, onnx_metadata, onnx_path, read_manifest,
                          update_manifest)

__all__ = ["ensure_export", "export_onnx", "export_variants", "onnx_metadata", "onnx_path", "read_manifest",
           "update_manifest"]
