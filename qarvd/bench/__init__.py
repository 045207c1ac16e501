"""Benchmark logic (latency, GEMM, attention, compile check, calibration and real-model profiles, generation
scaling), built from conf/ groups; each entry point in scripts/ composes its conf/bench/<name>.yaml and calls one
function here."""
