"""Benchmark logic (latency, GEMM, attention, calibration and real-model profiles), built from conf/ groups; the
entry points in scripts/ only parse arguments and call one function here."""
