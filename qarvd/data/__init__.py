"""Prompt sources and the procedural video dataset of the embedded model."""
