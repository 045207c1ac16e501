"""Quantization methods as recipes over qarvd.quant: minmax, adaround, smoothquant, ptq4dit, svdquant, qarvd."""
