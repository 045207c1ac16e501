"""The application layer: the only package that wires models, methods, deploy and eval together.

Each stage is a plain function of a composed config, callable from a notebook without Hydra:
:mod:`~qarvd.app.calibrate` (train_quant), :mod:`~qarvd.app.generate` (sharded paired videos),
:mod:`~qarvd.app.evaluate` (metrics and records), :mod:`~qarvd.app.embedded` (the embedded model's training and
judging), :mod:`~qarvd.app.wandb_logger` and :mod:`~qarvd.app.launch` (loggers and Hydra launcher callbacks);
analyses: :mod:`~qarvd.app.sensitivity` (frame alpha, Fig. 2), :mod:`~qarvd.app.outlier_report` (Figs. 3/4),
:mod:`~qarvd.app.diagnostics` (latent-table diagnostics), :mod:`~qarvd.app.deploy_quality` (real kernels vs fake
quant), :mod:`~qarvd.app.sample_grid` (a model's sample figure).
"""
