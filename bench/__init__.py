"""Benchmarks: Distillery's training step side by side with a hand-written baseline (see README.md)."""
