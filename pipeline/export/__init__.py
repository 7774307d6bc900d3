from .onnx_export import export_onnx, export_variants, onnx_path, read_manifest, update_manifest

__all__ = ["export_onnx", "export_variants", "onnx_path", "read_manifest", "update_manifest"]
