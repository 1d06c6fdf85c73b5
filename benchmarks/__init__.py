"""Benchmarks of qualcl's kernels against their peers (not part of the test suite).

- ``python -m benchmarks.compare``: every implementation and peer in one process, ratio tables in
  ``benchmarks/results/``.
- ``python -m pytest benchmarks --benchmark-enable``: pytest-benchmark micro-benchmarks.
"""
