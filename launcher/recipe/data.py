"""The recipe's data: token sequences from a fixed random order-1 Markov chain, generated
on each rank (nothing is downloaded or shipped as a file).

The chain (each token has a few likely successors) is drawn from
``data.seed``; a batch is a pure function of (seed, step, micro step, data-parallel rank),
so a job resumed from a checkpoint sees exactly the batches an uninterrupted one would.
The entropy of the chain bounds how low the loss can go (``entropy_nats``).

Use: ``data = MarkovData(vocab, seq_len, seed); x, y = data.batch(step, micro, rank, n)``.
"""

from __future__ import annotations

import torch

SUCCESSORS = 4


class MarkovData:
    def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        logits = torch.full((vocab_size, vocab_size), -30.0)
        likely = torch.randint(0, vocab_size, (vocab_size, SUCCESSORS), generator=gen)
        weights = torch.rand((vocab_size, SUCCESSORS), generator=gen) * 3
        logits.scatter_(1, likely, weights)
        self.probs = torch.softmax(logits, dim=-1)

    def entropy_nats(self) -> float:
        p = self.probs.clamp_min(1e-12)
        return float(-(p * p.log()).sum(-1).mean())

    def batch(
        self, step: int, micro: int, rank: int, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seed = (self.seed * 1_000_003 + step * 10_007 + micro * 101 + rank) % (2**63)
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.empty((size, self.seq_len + 1), dtype=torch.long)
        tokens[:, 0] = torch.randint(0, self.vocab_size, (size,), generator=gen)
        for t in range(1, self.seq_len + 1):
            probs = self.probs[tokens[:, t - 1]]
            tokens[:, t] = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        return tokens[:, :-1], tokens[:, 1:]
