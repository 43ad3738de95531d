"""Benchmarks with their own runner (median of runs, ratio to a baseline measured in the same run)."""
