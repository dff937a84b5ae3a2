"""Speed: throughput and wall time of scoring, generation and multi-GPU runs (see benchmarks/README.md)."""
