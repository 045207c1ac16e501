"""The application layer: the only package that wires models, methods, deploy and eval together.

Each stage is a plain function of a composed config, callable from a notebook without Hydra:
:mod:`~qarvd.app.calibrate` (train_quant), :mod:`~qarvd.app.generate` (sharded paired videos),
:mod:`~qarvd.app.evaluate` (metrics and records), :mod:`~qarvd.app.embedded` (the embedded model's training and
judging), :mod:`~qarvd.app.wandb_logger` and :mod:`~qarvd.app.launch` (loggers and Hydra launcher callbacks).
"""
