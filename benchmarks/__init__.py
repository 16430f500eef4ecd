"""Benchmark scripts (a regular package: devito installs a top-level ``benchmarks`` package that
would otherwise shadow this folder)."""
