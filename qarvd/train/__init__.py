"""Training of the embedded model's networks (the tiny ARVD and its video feature network) on procedural videos."""
