"""Helpers the benchmarks share: model construction, timing, reports, two-sample checks, the old decoder."""
