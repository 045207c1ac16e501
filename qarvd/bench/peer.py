"""The ``peer`` section of the latency benchmark: the public Self-Forcing inference code, timed in the same run.

What a user runs today is the anchor of every speed claim, so the benchmark times it beside this project's rows:
``peer_dir`` is a user-supplied checkout of github.com/guandeh17/Self-Forcing (Apache-2.0; nothing of it is copied
here). Its ``CausalWanModel`` with seeded random bf16 weights at Wan2.1-1.3B dims runs through its own
``CausalInferencePipeline`` (4 steps x 7 chunks of 3 latent frames, 60 x 104, text context [B, 512, 4096]: the
benchmark's own rollout), once per SDPA backend of ``peer_backends`` (``default``: the backends SDPA picks itself).
It runs in a child process whose PYTHONPATH holds the checkout (its modules import each other by top-level names);
its torchvision, flash_attn and demo_utils (low-memory mode only) imports fall back or are stubbed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from qarvd.bench.report import Report, log

WAN_DIMS = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
                text_dim=4096, out_dim=16, num_heads=12, num_layers=30, qk_norm=True, cross_attn_norm=True, eps=1e-6)


def peer_section(cfg: DictConfig, rep: Report) -> None:
    """Time the checkout at ``cfg.peer_dir`` in a child process; its rows go under ``peer`` in the report."""
    if not cfg.peer_dir or not (Path(cfg.peer_dir) / "pipeline" / "causal_inference.py").is_file():
        raise FileNotFoundError(f"peer_dir={cfg.peer_dir!r} is not a Self-Forcing checkout (pipeline/causal_inference.py "
                                "missing): clone github.com/guandeh17/Self-Forcing and point peer_dir at it")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(cfg.peer_dir).resolve()),
                                                            os.environ.get("PYTHONPATH", "")])}
        args = [sys.executable, "-m", "qarvd.bench.peer", str(out), json.dumps(
            dict(batches=list(cfg.batches), backends=list(cfg.peer_backends), repeats=int(cfg.repeats),
                 frames=int(cfg.frames), frames_per_chunk=int(cfg.frames_per_chunk), steps=int(cfg.steps),
                 height=int(cfg.height), width=int(cfg.width), seed=int(cfg.seed)))]
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the peer rollout failed:\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    rep.put("peer", result)
    log("peer", {k: v.get("seconds", v.get("error")) for k, v in result["runs"].items()})


def _stub_missing(names: list[str]) -> None:
    """Stand-ins for imports the peer's pipeline makes but the timed rollout never uses (torchvision on a bare image)."""
    import importlib.machinery
    import types

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Stub(f"{self.__name__}.{name}")

        def __call__(self, *a, **k):
            return self

    for name in names:
        sys.modules.setdefault(name, Stub(name)).__spec__ = importlib.machinery.ModuleSpec(name, None)


def route_attention(wa, wm) -> None:
    """Send the peer's attention to SDPA when no FlashAttention 2/3 is installed, as the public code's own fallback
    does (``wa``: its ``wan.modules.attention``, ``wm``: its ``wan.modules.model``).

    FlashAttention-4 (``flash-attn-4``, which this benchmark's ``fa4`` rows use) installs a ``flash_attn`` namespace
    without FA2's API: the public code's ``import flash_attn`` check takes it for FA2 and fails at the first call, so
    such a namespace counts as no FA2 here."""
    if wa.FLASH_ATTN_2_AVAILABLE and not hasattr(getattr(wa, "flash_attn", None), "flash_attn_varlen_func"):
        wa.FLASH_ATTN_2_AVAILABLE = False
    if not (wa.FLASH_ATTN_2_AVAILABLE or wa.FLASH_ATTN_3_AVAILABLE):
        wm.flash_attention = lambda q, k, v, k_lens=None, **kw: wa.attention(q, k, v)


def _worker(out: str, settings: dict) -> None:
    import statistics
    import time
    import types

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        _stub_missing(["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.io"])
    try:
        import demo_utils.memory  # noqa: F401  (only its low-memory mode uses it; not in every checkout)
    except ImportError:
        _stub_missing(["demo_utils", "demo_utils.memory"])
    import pipeline.causal_inference as ci
    import wan.modules.attention as wa
    import wan.modules.model as wm
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper
    from wan.modules.causal_model import CausalWanModel

    route_attention(wa, wm)
    torch.manual_seed(settings["seed"])
    model = CausalWanModel(**WAN_DIMS)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to("cuda", torch.bfloat16).eval()
    wrapper = WanDiffusionWrapper.__new__(WanDiffusionWrapper)
    torch.nn.Module.__init__(wrapper)
    wrapper.model, wrapper.uniform_timestep = model, False
    wrapper.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
    wrapper.scheduler.set_timesteps(1000, training=True)
    wrapper.seq_len = settings["frames"] * settings["height"] * settings["width"] // 4
    wrapper.post_init()

    class Text(torch.nn.Module):
        def forward(self, text_prompts):
            return {"prompt_embeds": self.ctx}

    class Latents(torch.nn.Module):
        def decode_to_pixel(self, latents, use_cache=False):
            return latents

    args = types.SimpleNamespace(denoising_step_list=[1000, 750, 500, 250][: settings["steps"]],
                                 warp_denoising_step=True, num_frame_per_block=settings["frames_per_chunk"],
                                 independent_first_frame=False, context_noise=0, model_kwargs={})
    text = Text()
    pipe = ci.CausalInferencePipeline(args, device="cuda", generator=wrapper, text_encoder=text, vae=Latents())
    model.num_frame_per_block = settings["frames_per_chunk"]
    chosen = {"default": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION]}
    res = {"device": torch.cuda.get_device_name(), "params": sum(p.numel() for p in model.parameters()), "runs": {}}
    for batch in settings["batches"]:
        text.ctx = torch.randn(batch, 512, 4096, device="cuda", dtype=torch.bfloat16)
        noise = torch.randn(batch, settings["frames"], 16, settings["height"], settings["width"], device="cuda",
                            dtype=torch.bfloat16)
        for name in settings["backends"]:
            pipe.kv_cache1 = None
            times = []
            try:
                ctx = sdpa_kernel(chosen[name]) if chosen[name] else torch.autograd.grad_mode.no_grad()
                with ctx, torch.no_grad():
                    for _ in range(1 + settings["repeats"]):  # one warm-up, then the timed ones
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        pipe.inference(noise=noise, text_prompts=["x"] * batch, return_latents=True)
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - t0)
                res["runs"][f"b{batch}_{name}"] = dict(seconds=statistics.median(times[1:]), runs=times[1:], batch=batch)
            except Exception as e:  # noqa: BLE001
                res["runs"][f"b{batch}_{name}"] = dict(error=f"{type(e).__name__}: {str(e)[:300]}", batch=batch)
    Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
