"""Measured figures (docs/benchmarks.md) and the side by side with the authors 'code. Not part of the wheel."""
