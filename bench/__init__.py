"""Benchmarks of lowres_kernels against every peer (pytest-benchmark); see bench/conftest.py."""
