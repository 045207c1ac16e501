"""The real-model path (self-forcing / causal-forcing on Wan2.1) with tiny random models of the REAL classes.

``transformers.UMT5EncoderModel``, ``diffusers.AutoencoderKLWan`` and ``CausalWanModel`` are written in the public
file layouts (Wan ``.pth`` files / Diffusers folders, ``self_forcing_dmd.pt`` with ``generator_ema`` and ``model.``,
a real sentencepiece tokenizer folder) and loaded by the normal code; the entry points run through ``model=self_forcing``
with only paths and dims overridden.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qarvd.models.checkpoint import CheckpointError
from qarvd.models.public_layout import WAN_T5_FILE, WAN_TOKENIZER_DIR, WAN_VAE_FILE, write_generator, write_wan_release
from qarvd.models.umt5 import UMT5TextEncoder
from qarvd.models.wan_vae import WanVAE
from qarvd.utils.errors import MissingWeightsError

from conftest import compose

REPO = Path(__file__).resolve().parents[1]
T5_ARCH = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2)
VAE_ARCH = dict(base_dim=8, num_res_blocks=1)  # Wan2.1 structure (4 levels, z 16), 8 base channels, 1 res block
DIT_ARCH = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_dim=32, text_len=16)
PROMPTS = ["a red fox jumps over a lazy dog in the snow", "clouds   drifting over green mountains",
           "a drone flies over a neon city street at night", "waves crash against a rocky beach"]


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny Wan2.1 release (Wan layout), a self-forcing checkpoint and the two prompt files, like a user's disk."""
    from qarvd.models.wan import CausalWanModel, WanConfig

    root = tmp_path_factory.mktemp("weights")
    wan = root / "Wan2.1-T2V-1.3B"
    write_wan_release(wan, T5_ARCH, VAE_ARCH, layout="wan", seed=0)
    torch.manual_seed(1)
    dit = CausalWanModel(WanConfig(**DIT_ARCH))
    write_generator(dit, root / "self_forcing" / "self_forcing_dmd.pt", "generator_ema", "model.")
    prompts = root / "prompts"
    (prompts / "vbench").mkdir(parents=True)
    (prompts / "MovieGenVideoBench_extended.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
    (prompts / "vbench" / "all_dimension_extended.txt").write_text("\n".join(PROMPTS[1:]) + "\n")
    (prompts / "vbench" / "all_dimension.txt").write_text("\n".join(p.split(" over ")[0] for p in PROMPTS[1:]) + "\n")
    return root


def real_overrides(root: Path, log_dir: Path) -> list[str]:
    """``model=self_forcing`` with only paths and (tiny) dims overridden."""
    ov = ["model=self_forcing", f"paths.weights_dir={root}", f"paths.prompts_dir={root / 'prompts'}",
          f"paths.log_dir={log_dir}", "device=cpu", "model.latent.height=4", "model.latent.width=6",
          "model.rollout.num_frames=4", "model.rollout.frames_per_chunk=2"]  # 2 chunks, 13 video frames
    ov += [f"model.arch.{k}={v}" for k, v in DIT_ARCH.items()]
    ov += [f"model.text_encoder.arch.{k}={v}" for k, v in T5_ARCH.items() if k != "d_model"]  # d_model = text_dim
    ov += [f"model.vae.arch.{k}={v}" for k, v in VAE_ARCH.items()]
    return ov


# bf16 runs ~10x slower than fp32 on CPU; the released dtypes stay the config defaults
CPU_FP32 = ["model.dtype=float32", "model.text_encoder.dtype=float32", "model.vae.dtype=float32"]


def _encoder(paths, tmp_path, **kw):
    return UMT5TextEncoder(str(paths["text_weights"]), str(paths["tokenizer"]), text_len=16, arch=T5_ARCH,
                           dtype="float32", cache_dir=str(tmp_path / "cache"), **kw)


# ------------------------------------------------------------------------------------------------- umT5
def _wan_t5_reference(sd: dict, ids: torch.Tensor, mask: torch.Tensor, heads: int, buckets: int = 32,
                      max_dist: int = 128, eps: float = 1e-6) -> torch.Tensor:
    """Wan's T5Encoder forward written from its definition (wan/modules/t5.py), in float64, on Wan's key names."""
    sd = {k: v.double() for k, v in sd.items()}
    x = F.embedding(ids, sd["token_embedding.weight"])
    b, n, d = x.shape
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half = buckets // 2  # bidirectional: half the buckets per direction
    exact = half // 2
    far = exact + (torch.log(rel.abs().clamp(min=1).double() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    bucket = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.clamp(max=half - 1))

    def rms(h, w):
        return w * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)

    for i in range(sum(1 for k in sd if k.endswith(".norm1.weight"))):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = ((h @ sd[p + f"attn.{c}.weight"].T).view(b, n, heads, -1) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # [1, H, Lq, Lk]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float64).min)
        attn = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)  # T5: no 1/sqrt(d) scaling
        x = x + torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, n, -1) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def test_umt5_from_wan_pth_matches_wans_t5_forward_and_zeros_past_the_prompt(release, tmp_path):
    wan = release / "Wan2.1-T2V-1.3B"
    enc = _encoder({"text_weights": wan / WAN_T5_FILE, "tokenizer": wan / WAN_TOKENIZER_DIR}, tmp_path)
    prompts = ["a red  fox", " a cat\tat sunset "]  # short enough to leave padding; odd whitespace is normalised
    ctx = enc.encode(prompts)
    assert ctx.shape == (2, 16, 32) and ctx.dtype == torch.float32
    tok = enc.tokenizer(["a red fox", "a cat at sunset"], padding="max_length", max_length=16,
                        truncation=True, return_tensors="pt")
    ref = _wan_t5_reference(torch.load(wan / WAN_T5_FILE, weights_only=True), tok["input_ids"], tok["attention_mask"],
                            heads=T5_ARCH["num_heads"])
    lengths = tok["attention_mask"].sum(1).tolist()
    assert lengths[0] < 16 and lengths[1] < 16  # both prompts are padded: the zero tail is exercised
    for i, n in enumerate(lengths):
        torch.testing.assert_close(ctx[i, :n].double(), ref[i, :n], atol=1e-4, rtol=1e-4)
        assert ctx[i, n:].abs().max() == 0 and ctx[i, :n].abs().sum(-1).min() > 0


def test_diffusers_folders_and_wan_pth_files_load_the_same_models(tmp_path):
    wan = write_wan_release(tmp_path / "wan", T5_ARCH, VAE_ARCH, layout="wan", seed=3)
    dif = write_wan_release(tmp_path / "dif", T5_ARCH, VAE_ARCH, layout="diffusers", seed=3)
    a = _encoder(wan, tmp_path / "a").encode(PROMPTS)
    b = _encoder(dif, tmp_path / "b").encode(PROMPTS)
    assert torch.equal(a, b) and a.abs().sum() > 0
    lat = torch.randn(1, 2, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    va = WanVAE(str(wan["vae_weights"]), dtype="float32", arch=VAE_ARCH).decode(lat)
    vb = WanVAE(str(dif["vae_weights"]), dtype="float32", arch=VAE_ARCH).decode(lat)  # config.json checked vs arch
    assert torch.equal(va, vb) and va.std() > 0
    with pytest.raises(CheckpointError, match=r"has base_dim=8 in config.json but model.vae.arch.base_dim=96"):
        WanVAE(str(dif["vae_weights"]), dtype="float32", arch={"base_dim": 96}).decode(lat)


def test_prompt_cache_is_reused_without_loading_the_encoder(release, tmp_path):
    wan = release / "Wan2.1-T2V-1.3B"
    paths = {"text_weights": wan / WAN_T5_FILE, "tokenizer": wan / WAN_TOKENIZER_DIR}
    first = _encoder(paths, tmp_path)
    first.precompute(PROMPTS + PROMPTS[:1])
    assert first._model is None  # precompute frees the encoder
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == len(PROMPTS)
    again = _encoder(paths, tmp_path)
    ctx = again.encode(PROMPTS[::-1])
    assert again._model is None  # every prompt came from the cache
    fresh = _encoder(paths, tmp_path, prompts_per_batch=3).__class__(
        str(paths["text_weights"]), str(paths["tokenizer"]), text_len=16, arch=T5_ARCH, dtype="float32", cache_dir=None)
    assert torch.equal(ctx, fresh.encode(PROMPTS[::-1]))


def test_prompt_cache_key_changes_with_the_weights(release, tmp_path):
    wan = write_wan_release(tmp_path / "w", T5_ARCH, VAE_ARCH, layout="wan", seed=5)
    enc = _encoder(wan, tmp_path)
    before = enc.encode(PROMPTS[:1])
    write_wan_release(tmp_path / "w", T5_ARCH, VAE_ARCH, layout="wan", seed=6)  # user replaces the file
    after = _encoder(wan, tmp_path).encode(PROMPTS[:1])
    assert not torch.equal(before, after)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


# ------------------------------------------------------------------------------------------------- VAE
def test_wan_vae_key_map_agrees_with_diffusers_own_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from qarvd.models.remap import to_foreign_names
    from qarvd.models.wan_vae import build_vae, wan_vae_name

    sd = build_vae(dict(base_dim=8)).state_dict()  # the released structure: 2 res blocks (diffusers hard-codes it)
    wan = to_foreign_names(sd, wan_vae_name)
    assert any(k.startswith("decoder.upsamples.7.") for k in wan) and "encoder.head.0.gamma" in wan
    back = convert_wan_vae_to_diffusers(wan)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_wan_vae_decode_unnormalises_and_matches_autoencoder(release):
    vae = WanVAE(str(release / "Wan2.1-T2V-1.3B" / WAN_VAE_FILE), dtype="float32", arch=VAE_ARCH, decode_batch=1)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 3, 16, 4, 6, generator=g)
    video = vae.decode(lat)
    assert video.shape == (2, 9, 3, 32, 48) and video.dtype == torch.float32  # 1 + 4 (F - 1) frames, x8
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0
    m = vae.model
    mean = torch.tensor(m.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(m.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        ref = m.decode(lat.transpose(1, 2) * std + mean).sample.clamp(-1, 1).transpose(1, 2)
    torch.testing.assert_close(video, ref)
    both = WanVAE(str(release / "Wan2.1-T2V-1.3B" / WAN_VAE_FILE), dtype="float32", arch=VAE_ARCH, decode_batch=2)
    torch.testing.assert_close(both.decode(lat), video)  # per-video chunking changes nothing
    z = vae.encode(video)
    assert z.shape == lat.shape
    with torch.no_grad():
        mu = m.encode(video.transpose(1, 2)).latent_dist.mean
    torch.testing.assert_close(z, ((mu - mean) / std).transpose(1, 2))


def test_wan_vae_defaults_are_wans_latent_statistics():
    from omegaconf import OmegaConf

    cfg = compose(["model=self_forcing"]).model.vae.arch
    mean = OmegaConf.to_container(cfg.latents_mean)
    assert len(mean) == 16 and mean[0] == -0.7571 and OmegaConf.to_container(cfg.latents_std)[-1] == 1.9160
    assert cfg.z_dim == 16 and cfg.base_dim == 96


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("missing,key,needle", [
    ("tokenizer", "model.text_encoder.tokenizer", "google/umt5-xxl"),
    ("t5", "model.text_encoder.weights", WAN_T5_FILE),
    ("vae", "model.vae.weights", WAN_VAE_FILE),
])
def test_missing_release_files_name_key_file_and_source(release, tmp_path, missing, key, needle):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    empty = tmp_path / "nowhere"
    cfg = compose(real_overrides(release, tmp_path) + [f"model.wan_dir={empty}"] +
                  ([f"model.text_encoder.weights={release}/Wan2.1-T2V-1.3B/{WAN_T5_FILE}"] if missing == "tokenizer" else []))
    node = cfg.model.vae if missing == "vae" else cfg.model.text_encoder
    with pytest.raises(InstantiationException) as err:  # what an entry point shows (Hydra wraps the cause)
        instantiate(node, _convert_="all")
    assert isinstance(err.value.__cause__, MissingWeightsError)
    msg = str(err.value)
    assert key in msg and needle in msg and str(empty) in msg and "huggingface.co/Wan-AI/Wan2.1-T2V-1.3B" in msg


def test_generate_encodes_its_prompts_once_then_frees_umt5(release, tmp_path, monkeypatch):
    """generate() fills the prompt cache for its share before the first rollout and drops the encoder (on the 1.3B
    model that frees ~11 GB of GPU memory for the rollouts); the rollouts then read the cache only."""
    from qarvd.app.evaluate import generate

    batches, released = [], []
    encode_batch, precompute = UMT5TextEncoder._encode_batch, UMT5TextEncoder.precompute
    monkeypatch.setattr(UMT5TextEncoder, "_encode_batch", lambda self, p: batches.append(list(p)) or encode_batch(self, p))
    monkeypatch.setattr(UMT5TextEncoder, "precompute",
                        lambda self, p: (precompute(self, p), released.append(self._model is None)))
    cfg = compose(real_overrides(release, tmp_path / "logs") + CPU_FP32 + _wiring() + [
        "eval.count=2", "eval.prompts_per_batch=1", f"eval.video_dir={tmp_path / 'videos'}"])
    out = generate(cfg)
    assert out["counts"]["fp"]["written"] == 2
    assert batches == [PROMPTS[1:3]] and released == [True]  # one encoder batch, before the rollouts, then freed
    assert len(list((tmp_path / "logs" / "prompt_cache").glob("*.safetensors"))) == 2


def test_tokenizer_folder_without_tokenizer_files_names_spiece_model(release, tmp_path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(MissingWeightsError, match=r"model\.text_encoder\.tokenizer.*spiece\.model"):
        UMT5TextEncoder(str(release / "Wan2.1-T2V-1.3B" / WAN_T5_FILE), str(tmp_path / "tok"), arch=T5_ARCH)


def test_dit_checkpoint_of_another_model_names_the_first_mismatched_key_and_shapes(release, tmp_path):
    from qarvd.models.pipeline import build_pipeline
    from qarvd.models.wan import CausalWanModel, WanConfig

    wrong = CausalWanModel(WanConfig(**{**DIT_ARCH, "ffn_dim": 48}))
    write_generator(wrong, tmp_path / "other.pt", "generator_ema", "model.")
    cfg = compose(real_overrides(release, tmp_path) + [f"model.checkpoint.path={tmp_path / 'other.pt'}"])
    with pytest.raises(CheckpointError, match=r"key 'blocks\.0\.ffn\.0\.weight' has shape \(48, 32\) in the checkpoint "
                                              r"but \(64, 32\) in the model"):
        build_pipeline(cfg.model)


def test_umt5_pth_of_another_model_names_the_key_and_both_shapes(release, tmp_path):
    wan = release / "Wan2.1-T2V-1.3B"
    enc = UMT5TextEncoder(str(wan / WAN_T5_FILE), str(wan / WAN_TOKENIZER_DIR), text_len=16,
                          arch={**T5_ARCH, "d_ff": 40}, dtype="float32")
    with pytest.raises(CheckpointError, match=r"key 'blocks\.0\.ffn\.gate\.0\.weight' has shape \(48, 32\) in the "
                                              r"checkpoint but \(40, 32\) in the model"):
        enc.encode(PROMPTS[:1])


def test_vae_pth_of_another_model_names_the_key_and_both_shapes(release):
    vae = WanVAE(str(release / "Wan2.1-T2V-1.3B" / WAN_VAE_FILE), dtype="float32", arch={"base_dim": 16})
    with pytest.raises(CheckpointError, match=r"key 'encoder\.conv1\.weight' has shape \(8, 3, 3, 3, 3\) in the "
                                              r"checkpoint but \(16, 3, 3, 3, 3\) in the model"):
        vae.decode(torch.zeros(1, 1, 16, 4, 6))


# ------------------------------------------------------------------------------------------------- pipeline
def test_self_forcing_pipeline_from_the_public_layout(release, tmp_path):
    from qarvd.models.pipeline import build_pipeline

    pipe = build_pipeline(compose(real_overrides(release, tmp_path) + CPU_FP32).model)
    lat = pipe.generate_latents(PROMPTS[:2], [0, 1])
    assert lat.shape == (2, 4, 16, 4, 6) and torch.isfinite(lat).all()
    again = pipe.generate_latents(PROMPTS[:2], [0, 1])
    assert torch.equal(lat, again)  # same prompts and seeds -> same latents (second time from the prompt cache)
    video = pipe.decode(lat)
    assert video.shape == (2, 13, 3, 32, 48)


@pytest.mark.parametrize("model,first,later,chunks", [
    ("causal_forcing_framewise_1step", 4, 1, 21),
    ("causal_forcing_framewise_2step", 4, 2, 21),
    ("causal_forcing_framewise", 4, 4, 21),
    ("self_forcing", 4, 4, 7),
])
def test_causal_forcing_step_variants(model, first, later, chunks):
    from omegaconf import OmegaConf

    from qarvd.models.rollout import RolloutConfig

    cfg = compose([f"model={model}"]).model
    rc = RolloutConfig(**OmegaConf.to_container(cfg.rollout, resolve=True))
    infos = rc.forward_infos()
    assert rc.num_chunks == chunks
    assert sum(1 for i in infos if i.chunk == 0) == first + 1  # + the K/V refresh
    assert sum(1 for i in infos if i.chunk == 1) == later + 1
    assert rc.timesteps(1)[0] == 1000.0
    if later == 2:
        assert rc.timesteps(1)[1] == pytest.approx(5 * 0.5 / (1 + 4 * 0.5) * 1000)  # 500 warped by shift 5


# ------------------------------------------------------------------------------------------------- entry points
def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    # one thread count for every process: torchrun gives its workers OMP_NUM_THREADS=1 unless it is set, and a CPU
    # matmul split over another number of threads sums in another order (the two-process videos then differ by a
    # rounding, seen on a 2-core machine)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _script(name: str, overrides: list[str], **kw) -> subprocess.CompletedProcess:
    return _run([sys.executable, f"scripts/{name}", *overrides], **kw)


def _wiring() -> list[str]:
    """eval/logger groups: selected on the command line until conf/config.yaml lists them (then plain overrides)."""
    root = compose([])
    return [("" if "eval" in root else "+") + "eval=default", ("" if "logger" in root else "+") + "logger=disabled"]


@pytest.fixture(scope="module")
def e2e(release, tmp_path_factory):
    """calibrate -> generate (FP + quantized) through model=self_forcing; paths, tiny dims and debug=tiny only."""
    out = tmp_path_factory.mktemp("e2e")
    ov = real_overrides(release, out / "logs") + CPU_FP32 + ["debug=tiny", "model.checkpoint.random_init=false"]
    calib = _script("train_quant.py", ov + [f"hydra.run.dir={out / 'calib'}"])
    cache = {p.name: p.stat().st_mtime_ns for p in (out / "logs" / "prompt_cache").glob("*.safetensors")}
    gen_ov = ov + _wiring() + ["eval.count=2", "eval.prompts_per_batch=1", f"eval.artifact={out / 'calib'}"]
    gen = _script("generate.py", gen_ov + [f"hydra.run.dir={out / 'gen'}", f"eval.video_dir={out / 'gen' / 'videos'}"])
    return {"dir": out, "ov": ov, "gen_ov": gen_ov, "cache_after_calib": cache, "logs": calib.stdout + gen.stdout}


def test_calibrate_generate_evaluate_through_the_self_forcing_config(e2e):
    import json

    from eval.video_io import read_video

    out = e2e["dir"]
    metrics = json.loads((out / "calib" / "record.json").read_text())
    assert (out / "calib" / "quant_artifact.safetensors").exists()
    assert 0 < metrics["metrics"]["latent_mse"] < 1 and len(metrics["per_chunk"]["latent_mse"]) == 2
    fp, q = sorted((out / "gen" / "videos" / "fp").glob("*.mp4")), sorted((out / "gen" / "videos" / "quant").glob("*.mp4"))
    assert [p.name for p in fp] == [p.name for p in q] and len(fp) == 2
    assert [p.name for p in fp] == ["a drone flies-0.mp4", "clouds   drifting-0.mp4"]  # VBench short prompts name the files
    a, b = read_video(fp[0]), read_video(q[0])
    assert a.shape == (13, 3, 32, 48)  # 4 latent frames -> 1 + 4 * 3 video frames, 4 x 6 latents -> 32 x 48
    assert 0 < (a - b).abs().mean() < 0.2  # W4A8 changes the video, a little
    res = _script("evaluate.py", e2e["ov"] + _wiring() + [
        f"hydra.run.dir={out / 'eval'}", f"eval.fp_dir={out / 'gen' / 'videos' / 'fp'}",
        f"eval.quant_dir={out / 'gen' / 'videos' / 'quant'}", "eval.fvd.enabled=false", "eval.lpips.enabled=false"])
    record = json.loads((out / "eval" / "record.json").read_text())
    assert record["model"] == "self_forcing" and record["num_items"] == 2, res.stdout[-2000:]
    assert 15 < record["metrics"]["psnr_fp"] < 100 and 0 < record["metrics"]["ssim_fp"] <= 1


def test_generation_reads_every_prompt_embedding_from_the_calibration_cache(e2e):
    cache = e2e["dir"] / "logs" / "prompt_cache"
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    assert after == e2e["cache_after_calib"]  # nothing re-encoded or rewritten by generation
    assert len(after) == 3  # calibration prompt (pool line 0) + the 2 evaluation prompts


def test_torchrun_two_processes_write_the_same_files_as_one(e2e):
    out = e2e["dir"]
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "scripts/generate.py", *e2e["gen_ov"], f"hydra.run.dir={out / 'gen2'}",
          f"eval.video_dir={out / 'gen2' / 'videos'}"], timeout=300)
    for kind in ("fp", "quant"):
        one = {p.name: p.read_bytes() for p in (out / "gen" / "videos" / kind).glob("*.mp4")}
        two = {p.name: p.read_bytes() for p in (out / "gen2" / "videos" / kind).glob("*.mp4")}
        assert len(one) == 2 and one == two


# ------------------------------------------------------------------------------------------------- launchers
def test_two_job_multirun_with_the_submitit_local_launcher(tmp_path):
    import json

    sweep = tmp_path / "sweep"
    _script("train_quant.py", ["-m", "hydra/launcher=local", "model=tiny", "debug=tiny", "bits=w8a8,w4a8",
                               f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep}"])
    jobs = {p.name.split("_")[0]: p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert sorted(jobs) == ["w4a8", "w8a8"]  # job folders <bits>_<model>_..._<hash> (no method override here)
    mse = {b: json.loads((p / "record.json").read_text())["metrics"]["latent_mse"] for b, p in jobs.items()}
    assert mse["w8a8"] < mse["w4a8"]  # W8A8 is closer to FP than W4A8
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert logs.count("submitit task: RANK=0 WORLD_SIZE=1") == 2  # each job ran as a submitit task


@pytest.mark.parametrize("launcher,callback", [("joblib_gpus", "GPUSlots"), ("slurm", "SubmititTorchDistributed"),
                                               ("local", "SubmititTorchDistributed")])
def test_launcher_configs_extend_the_plugins_and_add_their_callback(launcher, callback):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate

    from conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    h = cfg.hydra
    assert h.launcher._target_.startswith("hydra_plugins.") and "_target_" in str(h.callbacks)
    names = [type(instantiate(c)).__name__ for c in h.callbacks.values()]
    assert sorted(names) == sorted([callback, "JobLog", "MultirunPreflight"])  # + those of every entry point
    if launcher == "slurm":
        assert h.launcher.gpus_per_node == 1 and h.launcher.partition is None


def test_gpu_leases_are_exclusive_until_released(tmp_path):
    from qarvd.app.launch import lease_gpu

    a, fa = lease_gpu(tmp_path, 2)
    b, fb = lease_gpu(tmp_path, 2)
    assert {a, b} == {0, 1}
    with pytest.raises(TimeoutError):
        lease_gpu(tmp_path, 2, poll_s=0.01, timeout_s=0.05)
    fa.close()
    c, fc = lease_gpu(tmp_path, 2)
    assert c == a
    fb.close(), fc.close()


def test_gpu_slots_spread_jobs_before_sharing_and_set_each_jobs_threads(tmp_path, monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from qarvd.app.launch import GPUSlots, lease_gpu

    leases = [lease_gpu(tmp_path / "a", 2, slots_per_gpu=3) for _ in range(6)]
    assert [i for i, _ in leases] == [0, 1, 0, 1, 0, 1]  # slot 0 of each GPU first, then slot 1, ...
    with pytest.raises(TimeoutError, match="2 x 3 GPU slots"):
        lease_gpu(tmp_path / "a", 2, slots_per_gpu=3, poll_s=0.01, timeout_s=0.05)
    leases[3][1].close()  # GPU 1's second slot frees up
    again = lease_gpu(tmp_path / "a", 2, slots_per_gpu=3)
    assert again[0] == 1
    for _, f in leases[:3] + leases[4:] + [again]:
        f.close()
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "99")
    try:
        GPUSlots(lock_dir=str(tmp_path / "b"), jobs_per_gpu=4, threads_per_job=1).on_job_start(
            OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"num": 0}}}))
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="threads_per_job"):
        GPUSlots(threads_per_job=0)


# ------------------------------------------------------------------------------------------------- profiler
@pytest.mark.slow  # a smoke run of the GPU benchmark entry point (~30 s on 2 cores); python -m pytest -m slow
def test_profile_real_runs_and_reports_each_stage(release, tmp_path):
    import json

    ov = [o for o in real_overrides(release, tmp_path) if o.startswith(("model.arch", "model.text_encoder.arch",
                                                                           "model.vae.arch", "model.latent", "model.rollout"))]
    ov = [o.replace("vocab_size=64", "vocab_size=256") for o in ov]
    _script("profile_real.py", ["device=cpu", "batch_sizes=[1,2]", f"out={tmp_path}", "name=p",
                                f"hydra.run.dir={tmp_path / 'run'}",
                                f"tokenizer={release / 'Wan2.1-T2V-1.3B' / WAN_TOKENIZER_DIR}", *ov, *CPU_FP32[:1]])
    res = json.loads((tmp_path / "p.json").read_text())
    for stage in ("text_encode", "dit_rollout", "vae_decode"):
        assert set(res[stage]) == {"1", "2"} and all(v["seconds"] > 0 for v in res[stage].values())
    assert res["vae_decode"]["2"]["video_shape"] == [2, 13, 3, 32, 48]
    assert res["rollout"]["forwards_per_video"] == 10 and res["host_rss_gb"]["peak"] > 0
