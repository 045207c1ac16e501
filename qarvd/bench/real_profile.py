"""Time and memory of the real-model path: umT5 text encoding, DiT rollout and VAE decoding, reported separately.

Builds the composed ``model`` (self-forcing by default) with seeded random weights of the full-size architectures
(``model.checkpoint.random_init=true`` also makes the umT5-XXL and Wan VAE random), so no download is needed; only a
tokenizer folder (any umT5-compatible one: ids only feed the encoder) is read. Without ``tokenizer`` a tiny
sentencepiece tokenizer is trained on the spot. The prompt cache is off: every encode is timed for real.

Per batch size: seconds per video of the DiT rollout (all chunks, denoising + K/V refresh forwards), of the VAE
decode to 81 x 480 x 832 and of the text encoding, after one warm-up; peak GPU memory (allocated and reserved) per
phase and the process' peak host RSS. Settings: conf/bench/profile_real.yaml.
"""
from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from qarvd.bench.timing import Timer, host_rss_gb
from qarvd.utils.io import atomic_write_json

PROMPTS = [  # MovieGen-style extended prompts (realistic token counts)
    "A majestic red fox trots through a snow-covered pine forest at dawn, its breath visible in the cold air; the "
    "camera tracks alongside at ground level as soft golden light filters between the trees and snowflakes drift.",
    "An aerial drone shot glides over a neon-lit city street at night, rain-slick asphalt reflecting pink and blue "
    "signs, taxis weaving through traffic while pedestrians with umbrellas cross at a busy intersection.",
    "Close-up of a chef's hands slicing bright vegetables on a wooden board in a busy restaurant kitchen, steam rising "
    "from pans in the background, shallow depth of field, warm tungsten lighting.",
    "Ocean waves crash against dark volcanic rocks under a stormy sky, white spray bursting into the air in slow "
    "motion, wide-angle shot from the shore with heavy clouds rolling over the horizon.",
]


def tokenizer_folder(tokenizer: str | None, work: Path) -> str:
    """``tokenizer``, or a tiny sentencepiece tokenizer trained on PROMPTS into ``work``."""
    if tokenizer is not None:
        return str(tokenizer)
    from qarvd.models.public_layout import write_tokenizer

    return str(write_tokenizer(work / "tokenizer", PROMPTS, vocab_size=256))


def command_overrides() -> list[str]:
    """The Hydra overrides of this run (none when called without Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def timed(fn, repeats: int, device: torch.device) -> tuple:
    """(result, fastest seconds, GPU peaks of the last run) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        with Timer(device, reset_peak=True) as t:
            out = fn()
        times.append(t.seconds)
    return out, min(times), t.gpu


def profile(cfg: DictConfig, work: Path) -> dict:
    from qarvd.models.pipeline import build_pipeline

    dev = torch.device(cfg.device)
    with open_dict(cfg):
        cfg.model.text_encoder.tokenizer = tokenizer_folder(cfg.tokenizer, work)
    mcfg, sizes = cfg.model, list(cfg.batch_sizes)
    res: dict = {"model": mcfg.name,
                 "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
                 "torch": torch.__version__, "dtype": {"dit": mcfg.dtype, "text": mcfg.text_encoder.dtype,
                                                       "vae": mcfg.vae.dtype},
                 "overrides": command_overrides(), "batch_sizes": sizes, "repeats": cfg.repeats}
    with Timer(dev, reset_peak=True) as t:
        pipe = build_pipeline(mcfg, device=dev)
    res["build_dit_s"] = t.seconds
    enc, vae = pipe.text_encoder, pipe.vae
    with Timer(dev, reset_peak=True) as t:
        enc.model  # noqa: B018  (random umT5 built on the device)
    res["build_text_encoder_s"] = t.seconds
    print(f"built: DiT {res['build_dit_s']:.1f} s, umT5 {t.seconds:.1f} s, host RSS {host_rss_gb()}", flush=True)
    rc = pipe.rollout_cfg
    res["rollout"] = {"num_frames": rc.num_frames, "frames_per_chunk": rc.frames_per_chunk,
                      "forwards_per_video": len(rc.forward_infos()), "latent": list(pipe.latent_shape)}
    bmax = max(sizes)
    prompts = (PROMPTS * bmax)[:bmax]
    seeds = list(range(bmax))

    text, dit, dec, ctx, lat = {}, {}, {}, {}, {}
    enc.encode(prompts[:1])  # warm-up
    for b in sizes:
        ctx[b], s, gpu = timed(lambda: enc.encode(prompts[:b]), cfg.repeats, dev)
        text[b] = {"seconds": s, "seconds_per_prompt": s / b, "gpu": gpu}
        print(f"text encode, batch {b}: {text[b]}", flush=True)
    text_model_gb = sum(x.numel() * x.element_size() for x in enc.model.parameters()) / 2**30
    enc.release()

    pipe.generate_latents(prompts[:1], seeds[:1], context=ctx[min(sizes)][:1])  # warm-up
    for b in sizes:
        lat[b], s, gpu = timed(lambda: pipe.generate_latents(prompts[:b], seeds[:b], context=ctx[b]), cfg.repeats, dev)
        dit[b] = {"seconds": s, "seconds_per_video": s / b, "gpu": gpu}
        print(f"DiT rollout, batch {b}: {dit[b]}", flush=True)

    vae.decode(lat[min(sizes)][:1])  # warm-up (loads the VAE)
    for b in sizes:
        video, s, gpu = timed(lambda: vae.decode(lat[b]), cfg.repeats, dev)
        dec[b] = {"seconds": s, "seconds_per_video": s / b, "gpu": gpu, "video_shape": list(video.shape)}
        print(f"VAE decode, batch {b}: {dec[b]}", flush=True)

    res.update({
        "text_encode": text, "dit_rollout": dit, "vae_decode": dec,
        "params": {"dit": sum(x.numel() for x in pipe.model.parameters()),
                   "vae": sum(x.numel() for x in vae.model.parameters()), "text_encoder_gb": text_model_gb},
        "seconds_per_video_total": {b: text[b]["seconds_per_prompt"] + dit[b]["seconds_per_video"]
                                    + dec[b]["seconds_per_video"] for b in sizes},
        "host_rss_gb": host_rss_gb(),
    })
    return res


def profile_real(cfg: DictConfig) -> Path:
    """Profile, print the per-video summary, write ``<out>/<name>.json``; returns its path."""
    with tempfile.TemporaryDirectory() as tmp:
        res = profile(cfg, Path(tmp))
    for b in res["batch_sizes"]:
        print(f"batch {b}: text {res['text_encode'][b]['seconds_per_prompt']:.3f} s/prompt, "
              f"DiT {res['dit_rollout'][b]['seconds_per_video']:.3f} s/video, "
              f"VAE {res['vae_decode'][b]['seconds_per_video']:.3f} s/video")
    print(f"host RSS: {res['host_rss_gb']}")
    return atomic_write_json(Path(cfg.out) / f"{cfg.name}.json", res)
