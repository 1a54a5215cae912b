"""Benchmark suite (issue 6): compute ceilings, the seed recipe, the project's training and serving.

Run with ``python -m bench.run``. Nothing in the service imports this package.
"""
