"""Sentence encoders: a small Transformer built from ``torch.nn``, and the bag-of-words baselines.

A sentence arrives as word ids [B, L] (0 = padding, :mod:`clcourse.data.tokens`). The Transformer adds a learnt
position embedding to each word's embedding, runs a few self-attention layers in which padding is masked out, and
averages the outputs over the words (mean pooling) into one vector per sentence [1]. Its dropout (on the
embeddings, the attention weights and the feed-forward layers) is what SimCSE [2] uses as the augmentation: the
same sentence encoded twice in training mode gives two slightly different vectors.

[1] Vaswani et al., Attention Is All You Need, NeurIPS 2017.
[2] Gao et al., SimCSE: Simple Contrastive Learning of Sentence Embeddings, EMNLP 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clcourse.checks import check_number, shape_of

__all__ = ["TransformerSentenceEncoder", "bag_of_words", "check_word_ids", "mean_of_embeddings"]


def check_word_ids(ids, vocab_size: int, max_length: int | None = None) -> None:
    """Check that ``ids`` is an integer tensor [B, L] of word ids in [0, vocab_size), each row with a word."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"ids must be a torch.Tensor of word ids [B, L], got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor of word ids [B, L], got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"ids must be [B, L] with B, L >= 1, got shape {shape_of(ids)}")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(f"sentences may have at most {max_length} words (the position table), got L = {ids.shape[1]}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"word ids must be in [0, {vocab_size}), got values from {int(ids.min())} to {int(ids.max())}")
    empty = (ids == 0).all(dim=1)
    if empty.any():
        raise ValueError(f"every sentence needs at least one word; rows {empty.nonzero().flatten().tolist()} are "
                         f"all padding")


def _mean_over_words(vectors: Tensor, ids: Tensor) -> Tensor:
    """Average [B, L, D] over the non-padding positions of ids [B, L] -> [B, D]."""
    words = (ids != 0).unsqueeze(2).to(vectors.dtype)
    return (vectors * words).sum(dim=1) / words.sum(dim=1)


class TransformerSentenceEncoder(nn.Module):
    """Word + position embeddings, a Transformer encoder [1] and mean pooling over the words.

    Args:
        vocab_size: V, the number of words (id 0 is padding).
        dim: D, the width of every layer and of the sentence vector.
        layers: self-attention blocks.
        heads: attention heads per block (D must divide by it).
        max_length: the longest sentence (the size of the position table).
        dropout: probability of every dropout; SimCSE's augmentation [2] (0.1 there, as in BERT).

    Shapes: ids int64 [B, L] (0 = padding, at least one word per row) -> [B, D].
    """

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, max_length: int = 32,
                 dropout: float = 0.1):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("dim", dim), ("layers", layers), ("heads", heads),
                            ("max_length", max_length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim = {dim} and heads = {heads}")
        dropout = check_number("dropout", dropout, strict=False)
        if dropout >= 1:
            raise ValueError(f"dropout is a probability in [0, 1), got {dropout}")
        self.vocab_size, self.max_length, self.out_dim = vocab_size, max_length, dim
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_length, dim)
        # Positions start small (std 0.02, BERT's initialisation) next to words of scale 1: at first a sentence is
        # close to its bag of words, and where a word stands matters only as far as training makes it.
        nn.init.normal_(self.positions.weight, std=0.02)
        self.embedding_dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        # enable_nested_tensor=False: the nested fast path drops padded positions in eval mode only, so training
        # and evaluation would not run the same computation.
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def token_vectors(self, ids: Tensor) -> Tensor:
        """The contextual vector of every position: [B, L] -> [B, L, D] (padding positions included)."""
        check_word_ids(ids, self.vocab_size, self.max_length)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_dropout(self.words(ids) + self.positions(positions))
        return self.norm(self.transformer(x, src_key_padding_mask=ids == 0))

    def forward(self, ids: Tensor) -> Tensor:
        """Sentence vectors: the mean of the words' contextual vectors, [B, L] -> [B, D]."""
        return _mean_over_words(self.token_vectors(ids), ids)


def bag_of_words(ids: Tensor, vocab_size: int) -> Tensor:
    """Word counts, the baseline that knows which words a sentence has but not their order: [B, L] -> float [B, V].

    Column 0 (padding) is always 0.
    """
    check_word_ids(ids, vocab_size)
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    counts[:, 0] = 0
    return counts


def mean_of_embeddings(ids: Tensor, table: Tensor) -> Tensor:
    """The mean of the words' rows of ``table`` [V, D] (random, or learnt), over the words: [B, L] -> [B, D]."""
    if not isinstance(table, Tensor) or table.dim() != 2 or not table.is_floating_point():
        got = shape_of(table) if isinstance(table, Tensor) else type(table).__name__
        raise ValueError(f"table must be a floating-point tensor [V, D], got {got}")
    check_word_ids(ids, table.shape[0])
    return _mean_over_words(table[ids], ids)
