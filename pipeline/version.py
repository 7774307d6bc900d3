"""The package version, readable by every layer without importing the package's front door."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("pipeline")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+source"


def tool_versions() -> dict[str, str]:
    """The versions of the tools an artifact or a measurement depends on (installed ones)."""
    import platform

    versions = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-genai"):
        try:
            versions[package] = _metadata.version(package)
        except _metadata.PackageNotFoundError:
            pass
    return versions
