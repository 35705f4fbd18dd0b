"""Benchmarks: each operation timed next to its bare lower bound in the same run."""
