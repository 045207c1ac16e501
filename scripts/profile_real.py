"""Time and memory of the real-model path: umT5 text encoding, DiT rollout and VAE decoding, reported separately.

    python scripts/profile_real.py --device cuda --tokenizer <google/umt5-xxl folder> --out benchmarks/results/profile_real_h100.json
    python scripts/profile_real.py --device cpu --batch-sizes 1 <Hydra overrides shrinking model.*>   # smoke run

Builds ``model=self_forcing`` (or ``--model``) from its config with seeded random weights of the full-size
architectures (``model.checkpoint.random_init=true`` also makes the umT5-XXL and Wan VAE random), so no download is
needed; only a tokenizer folder (any umT5-compatible one: ids only feed the encoder) is read. Without ``--tokenizer``
a tiny sentencepiece tokenizer is trained on the spot. The prompt cache is off: every encode is timed for real.

Per batch size: seconds per video of the DiT rollout (all chunks, denoising + K/V refresh forwards), of the VAE
decode to 81 x 480 x 832 and of the text encoding, after one warm-up; peak GPU memory (allocated and reserved) per
phase and the process' peak host RSS. Writes one JSON file (atomically).
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
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


def host_rss_gb() -> dict:
    """Current and peak resident set size of this process (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out["current" if line.startswith("VmRSS") else "peak"] = int(line.split()[1]) / 2**20
    return out


class Phase:
    """Wall time (synchronised) and peak GPU memory of one block of work."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "Phase":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.gpu = ({"peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                     "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30} if self.cuda else None)


def compose_model(model: str, device: str, tokenizer: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import qarvd.utils.hydra_resolvers  # noqa: F401

    ov = [f"model={model}", f"device={device}", "model.checkpoint.random_init=true",
          f"model.text_encoder.tokenizer={tokenizer}", "model.text_encoder.cache_dir=null"] + list(overrides)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=ov).model


def profile(args) -> dict:
    from qarvd.models.pipeline import build_pipeline

    dev = torch.device(args.device)
    tok = args.tokenizer
    if tok is None:
        from qarvd.models.public_layout import write_tokenizer

        tok = str(write_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer", PROMPTS, vocab_size=256))
    mcfg = compose_model(args.model, args.device, tok, args.overrides)
    res: dict = {"model": args.model, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
                 "torch": torch.__version__, "dtype": {"dit": mcfg.dtype, "text": mcfg.text_encoder.dtype, "vae": mcfg.vae.dtype},
                 "overrides": args.overrides, "batch_sizes": args.batch_sizes, "repeats": args.repeats}
    with Phase(dev) as p:
        pipe = build_pipeline(mcfg, device=dev)
    res["build_dit_s"] = p.seconds
    enc, vae = pipe.text_encoder, pipe.vae
    with Phase(dev) as p:
        enc.model  # noqa: B018  (random umT5 built on the device)
    res["build_text_encoder_s"] = p.seconds
    print(f"built: DiT {res['build_dit_s']:.1f} s, umT5 {p.seconds:.1f} s, host RSS {host_rss_gb()}", flush=True)
    rc = pipe.rollout_cfg
    res["rollout"] = {"num_frames": rc.num_frames, "frames_per_chunk": rc.frames_per_chunk,
                      "forwards_per_video": len(rc.forward_infos()), "latent": list(pipe.latent_shape)}
    bmax = max(args.batch_sizes)
    prompts = (PROMPTS * bmax)[:bmax]
    seeds = list(range(bmax))

    text, dit, dec = {}, {}, {}
    enc.encode(prompts[:1])  # warm-up
    ctx = {}
    for b in args.batch_sizes:
        times = []
        for _ in range(args.repeats):
            with Phase(dev) as p:
                ctx[b] = enc.encode(prompts[:b])
            times.append(p.seconds)
        text[b] = {"seconds": min(times), "seconds_per_prompt": min(times) / b, "gpu": p.gpu}
        print(f"text encode, batch {b}: {text[b]}", flush=True)
    text_model_gb = sum(x.numel() * x.element_size() for x in enc.model.parameters()) / 2**30
    enc.release()

    pipe.generate_latents(prompts[:1], seeds[:1], context=ctx[min(args.batch_sizes)][:1])  # warm-up
    lat = {}
    for b in args.batch_sizes:
        times = []
        for _ in range(args.repeats):
            with Phase(dev) as p:
                lat[b] = pipe.generate_latents(prompts[:b], seeds[:b], context=ctx[b])
            times.append(p.seconds)
        dit[b] = {"seconds": min(times), "seconds_per_video": min(times) / b, "gpu": p.gpu}
        print(f"DiT rollout, batch {b}: {dit[b]}", flush=True)

    vae.decode(lat[min(args.batch_sizes)][:1])  # warm-up (loads the VAE)
    for b in args.batch_sizes:
        times = []
        for _ in range(args.repeats):
            with Phase(dev) as p:
                video = vae.decode(lat[b])
            times.append(p.seconds)
        dec[b] = {"seconds": min(times), "seconds_per_video": min(times) / b, "gpu": p.gpu,
                  "video_shape": list(video.shape)}
        print(f"VAE decode, batch {b}: {dec[b]}", flush=True)

    res.update({
        "text_encode": text, "dit_rollout": dit, "vae_decode": dec,
        "params": {"dit": sum(x.numel() for x in pipe.model.parameters()),
                   "vae": sum(x.numel() for x in vae.model.parameters()), "text_encoder_gb": text_model_gb},
        "seconds_per_video_total": {b: text[b]["seconds_per_prompt"] + dit[b]["seconds_per_video"]
                                    + dec[b]["seconds_per_video"] for b in args.batch_sizes},
        "host_rss_gb": host_rss_gb(),
    })
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="self_forcing", help="model config group option (conf/model/)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokenizer", default=None, help="umT5 tokenizer folder; default: train a tiny one")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (the fastest is kept)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. shrunk model.arch.* for a CPU smoke run)")
    args = ap.parse_args()
    res = profile(args)
    for b in args.batch_sizes:
        print(f"batch {b}: text {res['text_encode'][b]['seconds_per_prompt']:.3f} s/prompt, "
              f"DiT {res['dit_rollout'][b]['seconds_per_video']:.3f} s/video, "
              f"VAE {res['vae_decode'][b]['seconds_per_video']:.3f} s/video")
    print(f"host RSS: {res['host_rss_gb']}")
    if args.out:
        from qarvd.utils.io import atomic_write_json

        print(f"wrote {atomic_write_json(args.out, res)}")


if __name__ == "__main__":
    main()
