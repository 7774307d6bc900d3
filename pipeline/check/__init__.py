"""Correctness checks: runtimes against the examples and eager torch (verify), and the portable
files in other ONNX tools (tools)."""
