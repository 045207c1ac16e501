"""umT5-XXL text encoder of Wan2.1 (self-forcing, causal-forcing), run as ``transformers.UMT5EncoderModel``.

Weights come from either public layout (nothing downloads at run time):
- Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own T5 module names, renamed here by :func:`wan_t5_name`);
- a Diffusers-format ``text_encoder/`` folder (``config.json`` + safetensors), read by ``from_pretrained``.
The tokenizer is the ``google/umt5-xxl`` folder shipped inside the Wan release (``spiece.model`` / ``tokenizer.json``).

Like Wan, prompts are whitespace-normalised, tokenised to ``text_len`` (512) tokens with the EOS token, encoded with
the padding mask, and every position past the prompt's length is set to zero -> ``[B, 512, 4096]``.

The encoder is 5.7 B parameters (11 GB in bf16) and encoding is the same for every run of a prompt, so embeddings
are cached on disk, one safetensors file per (encoder, prompt), written atomically. The model itself is only loaded
on the first cache miss, and :meth:`UMT5TextEncoder.precompute` encodes a whole prompt list and frees it again, so
calibration and evaluation of the quantized DiT never hold the text encoder in GPU memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from qarvd.models.checkpoint import CheckpointError, read_state_dict
from qarvd.models.remap import to_own_names
from qarvd.utils.errors import MissingWeightsError, require_file, require_weights
from qarvd.utils.io import save_safetensors_atomic

# umT5-XXL encoder (reference-notes §1; Wan's umt5_xxl(): vocab 256384, dim 4096, ffn 10240, 64 heads, 24 layers,
# 32 relative-position buckets, max distance 128, per-layer position bias, gated GELU(tanh)).
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24,
                relative_attention_num_buckets=32, relative_attention_max_distance=128)
CACHE_VERSION = 1  # bump when what is cached changes meaning

# HF UMT5EncoderModel name -> Wan T5Encoder name (wan/modules/t5.py: token_embedding, blocks.N.{norm1, attn.{q,k,v,o},
# norm2, ffn.{gate.0, fc1, fc2}, pos_embedding.embedding}, norm). Wan's FFN is fc2(fc1(x) * gelu(gate(x))); HF's gated
# FFN is wo(act(wi_0(x)) * wi_1(x)), so gate -> wi_0 and fc1 -> wi_1.
_HF_TO_WAN = [
    (r"shared\.weight", "token_embedding.weight"),
    (r"encoder\.embed_tokens\.weight", "token_embedding.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"blocks.\1.norm1.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"blocks.\1.attn.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
     r"blocks.\1.pos_embedding.embedding.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"blocks.\1.norm2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight", r"blocks.\1.ffn.gate.0.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight", r"blocks.\1.ffn.fc1.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight", r"blocks.\1.ffn.fc2.weight"),
    (r"encoder\.final_layer_norm\.weight", "norm.weight"),
]


def wan_t5_name(hf_name: str) -> str:
    """The name a ``UMT5EncoderModel`` parameter has in Wan's ``models_t5_umt5-xxl-enc-bf16.pth``."""
    for pattern, repl in _HF_TO_WAN:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, repl, hf_name)
    raise CheckpointError(f"no Wan T5 name for UMT5EncoderModel parameter '{hf_name}'")


def umt5_config(arch: Optional[dict] = None):
    """``UMT5Config`` of the encoder (umT5-XXL unless ``arch`` overrides dims)."""
    from transformers import UMT5Config

    a = {**UMT5_XXL, **(arch or {})}
    return UMT5Config(**a, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                      is_encoder_decoder=False, use_cache=False, tie_word_embeddings=True)


def load_wan_t5(path: str | os.PathLike, arch: Optional[dict] = None, dtype: torch.dtype = torch.bfloat16):
    """``UMT5EncoderModel`` holding the weights of a Wan-layout ``.pth`` (memory-mapped, no random init pass)."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(arch))
    sd = to_own_names(model.state_dict(), read_state_dict(path), wan_t5_name, f"umT5 checkpoint '{path}'")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(dtype)


def load_diffusers_t5(folder: str | os.PathLike, arch: Optional[dict] = None, dtype: torch.dtype = torch.bfloat16):
    """``UMT5EncoderModel`` from a Diffusers/transformers ``text_encoder/`` folder; its dims must equal ``arch``."""
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    want = {**UMT5_XXL, **(arch or {})}
    for k, v in want.items():
        have = getattr(model.config, k)
        if have != v:
            raise CheckpointError(f"text encoder folder '{folder}' has {k}={have} in config.json but "
                                  f"model.text_encoder.arch.{k}={v}: wrong model (or set the arch override)")
    return model


def whitespace_clean(text: str) -> str:
    """Wan's prompt cleaning for umT5 (``clean='whitespace'``)."""
    return re.sub(r"\s+", " ", text).strip()


def _parse_dtype(name: str) -> torch.dtype:
    from qarvd.models.pipeline import parse_dtype

    return parse_dtype(name)


class UMT5TextEncoder:
    """Prompts -> umT5 context ``[B, text_len, d_model]`` (float32, CPU), zero past each prompt, cached on disk."""

    def __init__(
        self,
        weights: Optional[str],
        tokenizer: str,
        text_len: int = 512,
        cache_dir: Optional[str] = None,
        device: str = "cpu",
        published_at: str = "",
        dtype: str = "bfloat16",
        arch: Optional[dict] = None,
        prompts_per_batch: int = 8,
        random_init: bool = False,
        init_seed: int = 0,
    ) -> None:
        if int(text_len) < 1 or int(prompts_per_batch) < 1:
            raise ValueError(f"text_len ({text_len}) and prompts_per_batch ({prompts_per_batch}) must be >= 1")
        self.text_len, self.prompts_per_batch = int(text_len), int(prompts_per_batch)
        self.arch = {**UMT5_XXL, **(arch or {})}
        self.text_dim = int(self.arch["d_model"])
        self.device, self.dtype = torch.device(device), _parse_dtype(dtype)
        self.random_init, self.init_seed = bool(random_init), int(init_seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.weights = None if self.random_init else self._check_weights(weights, published_at)
        self.tokenizer_path = self._check_tokenizer(tokenizer, published_at)
        self._tokenizer = None
        self._model = None
        self._fingerprint: Optional[str] = None

    # -- files ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_weights(weights: Optional[str], published_at: str) -> Path:
        key = "model.text_encoder.weights"
        where = f"{published_at} (file models_t5_umt5-xxl-enc-bf16.pth of the Wan repo, or folder text_encoder/ of the Diffusers repo)"
        return require_weights(weights, key, where)

    @staticmethod
    def _check_tokenizer(tokenizer: str, published_at: str) -> Path:
        key = "model.text_encoder.tokenizer"
        where = f"{published_at} (folder google/umt5-xxl/ of the Wan repo, or tokenizer/ of the Diffusers repo)"
        path = require_file(tokenizer, key, where)
        if not any((path / f).exists() for f in ("spiece.model", "tokenizer.json")):
            raise MissingWeightsError(key, path / "spiece.model", where + "; the folder needs spiece.model or tokenizer.json")
        return path

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_path), local_files_only=True)
        return self._tokenizer

    @property
    def model(self):
        """The encoder on ``device``, loaded on first use."""
        if self._model is None:
            self._model = self._load().to(self.device).eval().requires_grad_(False)
        return self._model

    def _load(self):
        if self.random_init:
            from transformers import UMT5EncoderModel

            dev, default = self.device, torch.get_default_dtype()
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(self.init_seed)
                torch.set_default_dtype(self.dtype)  # built in the target dtype on the target device: no 23 GB
                try:  # fp32 host copy at XXL size
                    with dev:
                        return UMT5EncoderModel(umt5_config(self.arch))
                finally:
                    torch.set_default_dtype(default)
        if self.weights.is_dir():
            return load_diffusers_t5(self.weights, self.arch, self.dtype)
        return load_wan_t5(self.weights, self.arch, self.dtype)

    def release(self) -> None:
        """Free the encoder (embeddings already cached stay available)."""
        self._model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- cache ----------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """What the embeddings depend on: weights file(s) (path, size, mtime), tokenizer, text_len, dtype."""
        if self._fingerprint is None:
            def stat(p: Path) -> list:
                files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
                return [[str(q.resolve()), q.stat().st_size, q.stat().st_mtime_ns] for q in files]

            src = f"random:{self.init_seed}:{sorted(self.arch.items())}" if self.random_init else stat(self.weights)
            fp = {"version": CACHE_VERSION, "weights": src, "tokenizer": stat(self.tokenizer_path),
                  "text_len": self.text_len, "dtype": str(self.dtype)}
            self._fingerprint = json.dumps(fp, sort_keys=True)
        return self._fingerprint

    def cache_path(self, prompt: str) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256((self.fingerprint() + "\n" + prompt).encode("utf-8")).hexdigest()[:40]
        return self.cache_dir / f"{h}.safetensors"

    def _read_cache(self, prompt: str) -> Optional[torch.Tensor]:
        path = self.cache_path(prompt)
        if path is None or not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("prompt") != prompt:
                    return None  # hash collision or foreign file: re-encode (and overwrite)
                return f.get_tensor("context")
        except Exception:  # truncated/corrupt file: re-encode
            return None

    # -- encoding -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_batch(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Per prompt, the encoder states of its real tokens only: [len_i, d_model]."""
        tok = self.tokenizer([whitespace_clean(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.text_len, add_special_tokens=True, return_attention_mask=True,
                             return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.cpu()
        lengths = mask.sum(dim=1).tolist()
        return [states[i, : int(n)].clone() for i, n in enumerate(lengths)]

    def encode_tokens(self, prompts: Sequence[str], progress: bool = False) -> list[torch.Tensor]:
        """Per prompt [len_i, d_model] in the encoder dtype, from the cache where possible (misses are written)."""
        out: list[Optional[torch.Tensor]] = [self._read_cache(p) for p in prompts]
        todo = [i for i, t in enumerate(out) if t is None]
        if todo:
            from qarvd.utils.progress import progress_bar

            starts = range(0, len(todo), self.prompts_per_batch)
            for s in progress_bar(starts, desc="umT5 encode", unit="batch", disable=not progress):
                idx = todo[s : s + self.prompts_per_batch]
                for i, emb in zip(idx, self._encode_batch([prompts[i] for i in idx])):
                    out[i] = emb
                    path = self.cache_path(prompts[i])
                    if path is not None:
                        save_safetensors_atomic(path, {"context": emb}, {"prompt": prompts[i], "encoder": self.fingerprint()})
        return out  # type: ignore[return-value]

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Context [B, text_len, d_model] (float32, CPU): embeddings of the prompt tokens, zeros after them."""
        prompts = list(prompts)
        ctx = torch.zeros(len(prompts), self.text_len, self.text_dim, dtype=torch.float32)
        for i, emb in enumerate(self.encode_tokens(prompts)):
            ctx[i, : emb.shape[0]] = emb.float()
        return ctx

    def precompute(self, prompts: Sequence[str]) -> None:
        """Encode (and cache) every prompt of a list once, then free the encoder; later calls read the cache."""
        if self.cache_dir is None:
            raise ValueError("precompute needs model.text_encoder.cache_dir")
        self.encode_tokens(list(dict.fromkeys(prompts)), progress=True)
        self.release()

    def config(self) -> dict:
        return {"kind": "umt5", "weights": str(self.weights) if self.weights else None, "text_len": self.text_len,
                "arch": self.arch, "dtype": str(self.dtype), "random_init": self.random_init}
