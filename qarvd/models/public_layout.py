"""Write models in the file layouts of the public releases (Wan2.1, Self-Forcing, Causal-Forcing).

The real-model path must accept the files users download without edits. Tests and benchmarks cannot download them,
so they write random models of the real classes in exactly those layouts (same folder names, file names, key
names, top-level entries and prefixes) and run the normal loading code on them:

``<root>/Wan2.1_VAE.pth``, ``<root>/models_t5_umt5-xxl-enc-bf16.pth``, ``<root>/google/umt5-xxl/`` (Wan layout) or
``<root>/{vae,text_encoder,tokenizer}/`` (Diffusers layout), and ``self_forcing_dmd.pt`` = ``{generator_ema: {model.*}}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from qarvd.models.remap import to_foreign_names
from qarvd.utils.io import atomic_write

WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_VAE_FILE = "Wan2.1_VAE.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"

SAMPLE_SENTENCES = (
    "a red fox jumps over a lazy dog in the snow",
    "a cat sits on a windowsill watching the rain at sunset",
    "waves crash against a rocky beach under a stormy sky",
    "a timelapse of clouds drifting over green mountains",
    "a drone flies over a neon city street at night",
    "a chef slices vegetables in a busy kitchen, close up",
)


def save_torch_atomic(obj, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_tokenizer(folder: str | os.PathLike, sentences: Sequence[str] = SAMPLE_SENTENCES, vocab_size: int = 64) -> Path:
    """A real sentencepiece unigram tokenizer in the ``google/umt5-xxl`` layout (``spiece.model`` + HF files).

    Ids follow T5: 0 = pad, 1 = EOS, 2 = unk. The vocabulary is tiny (trained on ``sentences``).
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) * 4), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                              "model_max_length": 512, "legacy": False}))
    AutoTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(str(folder))  # + tokenizer.json
    return folder


def write_wan_t5(model, path: str | os.PathLike) -> Path:
    """A ``UMT5EncoderModel`` as Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (flat dict in Wan's T5 names)."""
    from qarvd.models.umt5 import wan_t5_name

    sd = to_foreign_names({k: v.detach().cpu() for k, v in model.state_dict().items()}, wan_t5_name)
    return save_torch_atomic(sd, path)


def write_wan_vae(vae, path: str | os.PathLike) -> Path:
    """An ``AutoencoderKLWan`` as Wan's ``Wan2.1_VAE.pth`` (flat dict in Wan's VAE names)."""
    from qarvd.models.wan_vae import wan_vae_name

    nrb = int(vae.config.num_res_blocks)
    sd = to_foreign_names({k: v.detach().cpu() for k, v in vae.state_dict().items()}, lambda k: wan_vae_name(k, nrb))
    return save_torch_atomic(sd, path)


def write_generator(model: torch.nn.Module, path: str | os.PathLike, key: str = "generator_ema",
                    prefix: str = "model.") -> Path:
    """A DiT as a Self-/Causal-Forcing training checkpoint: ``{key: {prefix + name: tensor}}`` (+ an unrelated entry)."""
    sd = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_torch_atomic({key: sd, "critic": {}}, path)


def write_wan_release(root: str | os.PathLike, t5_arch: Optional[dict] = None, vae_arch: Optional[dict] = None,
                      layout: str = "wan", seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """A random umT5 + Wan VAE + tokenizer under ``root`` in the Wan (``.pth``) or Diffusers (folders) layout.

    Returns the paths the ``model.text_encoder`` / ``model.vae`` config keys take. ``t5_arch``'s vocab must cover the
    tokenizer (64 ids); dims default to the full-size models.
    """
    from transformers import UMT5EncoderModel

    from qarvd.models.umt5 import umt5_config
    from qarvd.models.wan_vae import build_vae

    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout must be 'wan' or 'diffusers', got {layout!r}")
    root = Path(root)
    torch.manual_seed(seed)
    t5 = UMT5EncoderModel._from_config(umt5_config(t5_arch), dtype=dtype).eval()
    vae = build_vae(vae_arch).to(dtype).eval()
    if layout == "wan":
        paths = {"tokenizer": write_tokenizer(root / WAN_TOKENIZER_DIR),
                 "text_weights": write_wan_t5(t5, root / WAN_T5_FILE),
                 "vae_weights": write_wan_vae(vae, root / WAN_VAE_FILE)}
    else:
        t5.save_pretrained(str(root / "text_encoder"))
        vae.save_pretrained(str(root / "vae"))
        paths = {"tokenizer": write_tokenizer(root / "tokenizer"), "text_weights": root / "text_encoder",
                 "vae_weights": root / "vae"}
    return paths
