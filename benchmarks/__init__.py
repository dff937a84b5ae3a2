"""Benchmarks of biasprune: scoring and generation throughput against common baselines (see run_h200.sh)."""
