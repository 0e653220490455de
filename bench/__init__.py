"""Benchmarks: `python -m bench.train_speed` (make bench)."""
