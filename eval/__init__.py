"""Evaluation of quantized ARVDs against their full-precision model (paper §4).

Reference-based metrics compare videos generated from identical prompts and seeds by the FP and the quantized
model, paired by file name: FVD-FP (:mod:`eval.fvd`), LPIPS-FP, PSNR-FP and SSIM-FP (:mod:`eval.lpips_fp`).
Reference-free VBench scores run in VBench's own interpreter (:mod:`eval.vbench`). :mod:`eval.ds` scores how
well a metric discriminates bitwidths; :mod:`eval.tables` and :mod:`eval.plots` render the paper's tables and
figures from result JSONs. :mod:`qarvd.app.generate` writes the paired videos (scripts/generate.py, scripts/evaluate.py).
"""
