"""Runtimes: the registry (import-light), forward runners and decoders, onnxruntime-genai."""
