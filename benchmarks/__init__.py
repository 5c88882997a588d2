"""Benchmarks: scripts that measure the library's promises and write their figures
to ``benchmarks/RESULTS.md``. Run one with ``make bench-<name>``, all with
``make bench``."""
