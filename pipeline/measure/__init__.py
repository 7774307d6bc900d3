"""Measurements: latency (forward, decode, attention routes), memory, variant comparison and
sweeps, all timed by one harness (harness.py)."""
