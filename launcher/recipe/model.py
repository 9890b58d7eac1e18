"""The recipe's model: a small GPT-style decoder (pre-norm blocks, causal attention, tied
embedding head) and its FLOPs per token for MFU.

Sized by ``ModelConfig``; the default (vocab 64, d_model 64, 2 layers) has about 110 K
parameters and trains on CPU in seconds. Use: ``model = TinyGPT(cfg); loss = model(x, y)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=-1)
        shape = (batch, seq, self.n_heads, width // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, width))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.pos = nn.Embedding(cfg["seq_len"], cfg["d_model"])
        self.blocks = nn.ModuleList(
            Block(cfg["d_model"], cfg["n_heads"], cfg["d_ff"]) for _ in range(cfg["n_layers"])
        )
        self.ln_f = nn.LayerNorm(cfg["d_model"])
        self.head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def param_count(model: nn.Module, exclude_embeddings: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= sum(p.numel() for n, p in model.named_parameters() if n.startswith("pos."))
    return total


def flops_per_token(cfg: Any, n_params: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention scores."""
    return 6.0 * n_params + 12.0 * cfg["n_layers"] * cfg["d_model"] * cfg["seq_len"]
