"""Benchmarks of the service beside the reference seed: `python -m bench.run` (see bench/README.md)."""
