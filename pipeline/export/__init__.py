"""torch -> ONNX, one module per job: the artifact flavours (flavours.py, import-light), tracing
(trace.py), writing one artifact (onnx_export.py), its identity (identity.py), the manifest
(manifest.py), the export pool (pool.py), the fused-attention translation and the
onnxruntime-genai folder."""

_EXPORTED = (
    "ensure_export",
    "export_onnx",
    "export_variants",
    "onnx_metadata",
    "onnx_path",
    "read_manifest",
    "update_manifest",
)


def __getattr__(name):  # the exporter imports torch and onnx: only when it is used
    if name == "export_variants":
        from . import pool

        return pool.export_variants
    if name in _EXPORTED:
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTED)
