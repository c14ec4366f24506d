"""Benchmarks of distft: `python -m benchmarks` runs them all."""
