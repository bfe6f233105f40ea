"""Benchmarks: ``python -m benchmarks.step | overhead | loader`` and ``benchmarks/gpu.sh`` (see README.md).

Every benchmark prints a ratio against a baseline measured in the same run, with baseline and candidate
repetitions interleaved, so that load from other processes on the machine affects both alike.
"""
