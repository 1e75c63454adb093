"""Word vectors from a corpus of word ids: skip-gram with negative sampling (word2vec [1]).

Each word predicts the words around it: for a centre word w and a word c within ``window`` positions, the loss
-log sigmoid(u_c . v_w) - sum over k sampled words n of log sigmoid(-u_n . v_w) pulls v_w towards the context
vectors of its neighbours and away from those of random words, drawn from the unigram distribution raised to
3/4 as in [1]. Frequent words are subsampled as in [1] (a word of frequency f is kept with probability
sqrt(t / f), t = ``subsample``, afresh every epoch), so that "the" and "was" do not make every noun a
neighbour of every other. Words that appear in the same contexts end with similar vectors v. Aspect detection (SSCL [2])
starts from such vectors, trained on the review corpus itself, and keeps them fixed.

[1] Mikolov et al., Distributed Representations of Words and Phrases and their Compositionality, NeurIPS 2013.
[2] Shi et al., A Simple and Effective Self-Supervised Contrastive Learning Framework for Aspect Detection
    (SSCL), AAAI 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clcourse.checks import shape_of

__all__ = ["skipgram_pairs", "train_word_vectors"]


def skipgram_pairs(ids: Tensor, window: int) -> Tensor:
    """Every (centre, context) pair of word ids [P, 2] within ``window`` positions in a row of ``ids`` [N, L].

    Id 0 is padding and pairs with nothing.
    """
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.int64:
        raise ValueError(f"ids must be an int64 tensor [N, L] of word ids (0 = padding), got "
                         f"{shape_of(ids) if isinstance(ids, Tensor) else type(ids).__name__}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    pairs = []
    for offset in range(1, window + 1):
        for centre, context in ((ids[:, :-offset], ids[:, offset:]), (ids[:, offset:], ids[:, :-offset])):
            both = (centre != 0) & (context != 0)
            pairs.append(torch.stack([centre[both], context[both]], dim=1))
    return torch.cat(pairs)


def train_word_vectors(ids: Tensor, vocab_size: int, dim: int = 32, window: int = 5, negatives: int = 5,
                       epochs: int = 10, batch_size: int = 512, lr: float = 0.03, subsample: float = 1e-3,
                       seed: int = 0) -> Tensor:
    """Skip-gram vectors [vocab_size, dim] of the words in ``ids`` [N, L] (int64, 0 = padding; module docstring).

    Each epoch subsamples the frequent words, then takes Adam steps on shuffled batches of the (centre, context)
    pairs, ``negatives`` sampled words per pair. Row 0 (padding) is zero. The same seed gives the same vectors.
    """
    if len(skipgram_pairs(ids, window)) == 0:
        raise ValueError("ids hold no pair of words within the window: nothing to learn from")
    if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
        raise ValueError(f"ids must lie in [0, vocab_size) = [0, {vocab_size}), got [{int(ids.min())}, "
                         f"{int(ids.max())}]")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(ids[ids != 0], minlength=vocab_size).float()
    noise = counts.pow(0.75)
    noise = noise / noise.sum()
    keep = (subsample / (counts / counts.sum()).clamp_min(1e-12)).sqrt().clamp(max=1.0)
    centre_vectors = torch.nn.Parameter((torch.rand(vocab_size, dim, generator=generator) - 0.5) / dim)
    context_vectors = torch.nn.Parameter(torch.zeros(vocab_size, dim))
    optimizer = torch.optim.Adam([centre_vectors, context_vectors], lr=lr)
    for _ in range(epochs):
        pairs = skipgram_pairs(_subsampled(ids, keep, generator), window)
        for rows in torch.randperm(len(pairs), generator=generator).split(batch_size):
            centre, context = pairs[rows, 0], pairs[rows, 1]
            sampled = torch.multinomial(noise, len(rows) * negatives, replacement=True, generator=generator)
            # F.embedding, not indexing: indexing's backward added in another order on every run with 2 threads
            # (the same seed's vectors differed by 1e-4); embedding's gives the same vectors every time.
            v = F.embedding(centre, centre_vectors)  # [B, D]
            positive = (v * F.embedding(context, context_vectors)).sum(dim=1)
            negative = torch.einsum("bd,bkd->bk", v, F.embedding(sampled.view(len(rows), negatives), context_vectors))
            loss = -(F.logsigmoid(positive) + F.logsigmoid(-negative).sum(dim=1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    vectors = centre_vectors.detach().clone()
    vectors[0] = 0.0
    return vectors


def _subsampled(ids: Tensor, keep: Tensor, generator: torch.Generator) -> Tensor:
    """ids [N, L] with each word dropped with probability 1 - keep[word], the kept words moved left, 0 after."""
    kept = (ids != 0) & (torch.rand(ids.shape, generator=generator) < keep[ids])
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)  # kept words first, in their order
    return torch.where(kept, ids, 0).gather(1, order)
