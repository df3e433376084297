"""Benchmarks that print figures; run each as `python -m bench.NAME` from the
repository root."""
