"""Benchmarks of biasprune, by kind: speed/, validation/, analysis/, helpers/, gpu/ (the index is README.md)."""
