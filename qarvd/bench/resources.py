"""Registers, spills and shared memory of every Triton kernel variant this process compiled (the compiler's resource
report, recorded at the end of a latency run)."""
from __future__ import annotations

from kernels import act_quant, glue, qgemm


def kernel_resources() -> dict:
    out = {}
    for name, fn in (("norm_quant", act_quant._norm_quant_kernel), ("qgemm", qgemm._qgemm_kernel),
                     ("qk_rope", glue._qk_kernel), ("residual", glue._residual_kernel)):
        try:
            for dev_cache in fn.device_caches.values():
                for key, k in dev_cache[0].items():
                    out.setdefault(name, []).append(dict(regs=k.n_regs, spills=k.n_spills, shared=k.metadata.shared,
                                                         warps=k.metadata.num_warps, key=str(key)[-300:]))
        except Exception as e:  # noqa: BLE001 - a Triton version without this introspection
            out[name] = f"unavailable: {type(e).__name__}: {e}"
    return out
