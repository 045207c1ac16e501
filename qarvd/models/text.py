"""Text encoders that turn prompts into the DiT's cross-attention context [B, text_len, text_dim].

The real models use umT5-XXL (``qarvd.models.umt5``); the embedded model uses :class:`CaptionTokenEncoder`, a
learned word-embedding table over the procedural caption vocabulary, trained jointly with the DiT and saved in
the same checkpoint. Both zero the positions past the prompt length, like Wan's umT5 context.
"""
from __future__ import annotations

import re
import zlib
from typing import Optional, Sequence

import torch
from torch import nn

PAD_ID, UNK_ID = 0, 1


class CaptionTokenEncoder(nn.Module):
    """Word-level embedding encoder: lowercase words -> ids -> embeddings (+ learned positions).

    With a ``vocab`` list, words map to their index (+2; 0 = pad, 1 = unknown). Without one, words are hashed
    (crc32) into ``vocab_size - 2`` buckets, which keeps random-weight configs usable before a vocabulary exists.
    """

    def __init__(self, text_dim: int, text_len: int, vocab: Optional[Sequence[str]] = None, vocab_size: int = 256) -> None:
        super().__init__()
        self.vocab = list(vocab) if vocab is not None else None
        self.vocab_size = len(self.vocab) + 2 if self.vocab is not None else int(vocab_size)
        self.text_len, self.text_dim = int(text_len), int(text_dim)
        self._index = {w: i + 2 for i, w in enumerate(self.vocab)} if self.vocab is not None else None
        self.embedding = nn.Embedding(self.vocab_size, self.text_dim)
        self.position = nn.Parameter(torch.zeros(self.text_len, self.text_dim))
        nn.init.normal_(self.embedding.weight, std=1.0)
        nn.init.normal_(self.position, std=0.1)

    def tokenize(self, prompt: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", prompt.lower())
        if self._index is not None:
            ids = [self._index.get(w, UNK_ID) for w in words]
        else:
            ids = [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words]
        return ids[: self.text_len]

    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, text_len] (padded with 0) and a bool mask of real tokens."""
        ids = torch.zeros(len(prompts), self.text_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            t = self.tokenize(p)
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return ids, ids != PAD_ID

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(ids) + self.position[None, : ids.shape[1]]
        return emb * mask.unsqueeze(-1).to(emb.dtype)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.token_ids(prompts)
        dev = self.embedding.weight.device
        return self.forward(ids.to(dev), mask.to(dev))

    def config(self) -> dict:
        return {"text_dim": self.text_dim, "text_len": self.text_len, "vocab": self.vocab, "vocab_size": self.vocab_size}


def bundle_text_encoder(path: Optional[str], random_init: bool, text_dim: int, text_len: int, init_seed: int = 0,
                        published_at: str = "") -> CaptionTokenEncoder:
    """The caption encoder stored in an embedded-model bundle (keys ``text_encoder.*``, metadata ``text_encoder``).

    With ``random_init`` it is a seeded, hashed-vocabulary encoder, for runs without a trained checkpoint.
    """
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed) + 1)
            return CaptionTokenEncoder(text_dim, text_len)
    from qarvd.models.checkpoint import load_strict, read_metadata, read_state_dict, select_prefix
    from qarvd.utils.errors import require_file

    path = require_file(path, "model.checkpoint.path", published_at)
    meta = read_metadata(path).get("text_encoder")
    if not isinstance(meta, dict):
        from qarvd.models.checkpoint import CheckpointError

        raise CheckpointError(f"'{path}' has no 'text_encoder' metadata: not an embedded-model bundle")
    enc = CaptionTokenEncoder(meta["text_dim"], meta["text_len"], vocab=meta.get("vocab"), vocab_size=meta.get("vocab_size", 256))
    load_strict(enc, select_prefix(read_state_dict(path), "text_encoder."), f"bundle '{path}' text encoder")
    return enc
