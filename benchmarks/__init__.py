"""Benchmarks: scripts that print a table and write JSON into benchmarks/results/ (never timed asserts)."""
