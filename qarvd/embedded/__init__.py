"""The embedded domain: procedural captioned videos, their feature network, domain evaluation, and the training
of the tiny ARVD and the feature network (the CPU-sized testbed every quantization path runs on in CI)."""
