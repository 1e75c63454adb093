"""Word-level tokens: a vocabulary and the padded id matrix that the text encoders read.

The course's sentences are generated from known word lists, so a vocabulary is built once from every word the
generator can produce and a sentence never holds an unknown word; one that does is refused with the word named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["PAD", "build_vocabulary", "word_ids"]

PAD = "<pad>"  # word 0 of every vocabulary: the padding the encoders mask out


def build_vocabulary(words: Iterable[str]) -> list[str]:
    """:data:`PAD` followed by ``words`` without repeats, in order of first appearance."""
    return [PAD] + [word for word in dict.fromkeys(words) if word != PAD]


def word_ids(sentences: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> Tensor:
    """Sentences (lists of words) as int64 ids [N, L], padded with 0 to the longest length L.

    Raises ``ValueError`` for an empty sentence or a word outside ``vocabulary``.
    """
    if len(sentences) == 0:
        raise ValueError("word_ids needs at least one sentence")
    index = {word: i for i, word in enumerate(vocabulary)}
    ids = torch.zeros(len(sentences), max(len(s) for s in sentences), dtype=torch.int64)
    for row, sentence in enumerate(sentences):
        if len(sentence) == 0:
            raise ValueError(f"sentence {row} is empty; every sentence needs at least one word")
        unknown = [word for word in sentence if word not in index or word == PAD]
        if unknown:
            raise ValueError(f"sentence {row} has words outside the vocabulary: {unknown}")
        ids[row, :len(sentence)] = torch.tensor([index[word] for word in sentence])
    return ids
