"""Paraphrase pairs of generated review sentences: two wordings of one opinion, for sentence retrieval.

An *opinion* is a noun and an adjective of one aspect of lesson 16's reviews (:mod:`clcourse.data.reviews`):
"the waiter" + "rude". A *wording* puts it in a sentence template and around it, at random, an intensifier, a
general opinion word and filler phrases ("to be honest , i found the waiter really rude as always"). Two
wordings of the same opinion mean the same thing; what they share is the two words of the opinion, what they do
not share is everything else. Retrieval asks which of N candidate sentences says what a query says, the N
opinions all different: words common to every sentence ("the", "was", the filler) do not help, the opinion's
words do.

Unsupervised SimCSE [1] trains on single sentences (:func:`make_wordings`) and uses the pairs only to evaluate;
supervised SimCSE ([1], section 4) takes pairs that mean the same as its positives (:class:`PairLoader`).

[1] Gao et al., SimCSE: Simple Contrastive Learning of Sentence Embeddings, EMNLP 2021.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# The word lists of lesson 16's generator, so the two lessons' sentences read alike.
from clcourse.data.reviews import _ADJECTIVES, _GENERAL, _INTENSIFIERS, _NOUNS, _PREFIXES, _SUFFIXES, ASPECTS, Reviews
from clcourse.data.tokens import build_vocabulary, word_ids
from clcourse.data.views import EpochLoader, epoch_generators

__all__ = ["OPINIONS", "PARAPHRASE_TEMPLATES", "PairLoader", "ParaphrasePairs", "make_paraphrases", "make_wordings",
           "paraphrase_vocabulary"]

# Every template states "the {noun} is {adj}" and nothing else about the restaurant.
PARAPHRASE_TEMPLATES = (
    "the {noun} was {adj}",
    "the {noun} was {intensifier} {adj}",
    "{adj} {noun}",
    "we thought the {noun} was {adj}",
    "i found the {noun} {intensifier} {adj}",
    "the {noun} is always {adj} here",
    "{general} evening , the {noun} was {adj}",
    "{intensifier} {adj} {noun} if you ask me",
)
# (aspect, noun, adjective): 389 opinions, each aspect's nouns with its own adjectives.
OPINIONS = tuple((aspect, noun, adjective) for aspect in ASPECTS for noun in _NOUNS[aspect]
                 for adjective in _ADJECTIVES[aspect])


@dataclass
class ParaphrasePairs:
    """N opinions, each worded twice.

    Attributes:
        first, second: N sentences each (lists of words); ``first[i]`` and ``second[i]`` word opinion i with two
            different templates and independent fillers.
        opinions: int64-like array [N] of indices into :data:`OPINIONS`, all different when drawn so.
        vocabulary: :func:`paraphrase_vocabulary`, the same for every corpus.
    """

    first: list[list[str]]
    second: list[list[str]]
    opinions: np.ndarray
    vocabulary: list[str]

    def __len__(self) -> int:
        return len(self.first)

    def ids(self) -> tuple[Tensor, Tensor]:
        """Word ids of the two wordings, int64 [N, L1] and [N, L2] (0 = padding)."""
        return word_ids(self.first, self.vocabulary), word_ids(self.second, self.vocabulary)


def paraphrase_vocabulary() -> list[str]:
    """Every word a wording can hold, padding first; the same list on every call."""
    templates = " ".join(PARAPHRASE_TEMPLATES).replace("{", " ").replace("}", " ").split()
    fields = {"noun", "adj", "intensifier", "general"}
    words = [w for w in templates if w not in fields]
    for aspect in ASPECTS:
        words += _NOUNS[aspect] + _ADJECTIVES[aspect]
    for phrase in (*_INTENSIFIERS, *_GENERAL, *_PREFIXES, *_SUFFIXES):
        words += phrase.split()
    return build_vocabulary(words)


def make_paraphrases(n: int = 200, seed: int = 0, filler_fraction: float = 0.5, distinct: bool = True
                     ) -> ParaphrasePairs:
    """``n`` opinions, each worded twice with two different templates (module docstring).

    Args:
        n: the number of opinions; at most ``len(OPINIONS)`` (389) when ``distinct``.
        seed: the same seed gives the same pairs.
        filler_fraction: the probability, drawn per wording and per side, of a filler phrase before it and after it.
        distinct: draw the opinions without repeats, so that exactly one candidate is a query's paraphrase.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if distinct and n > len(OPINIONS):
        raise ValueError(f"there are {len(OPINIONS)} distinct opinions, got n = {n}; pass distinct=False for more")
    if not 0.0 <= filler_fraction <= 1.0:
        raise ValueError(f"filler_fraction must be in [0, 1], got {filler_fraction}")
    rng = np.random.default_rng(seed)
    opinions = rng.choice(len(OPINIONS), size=n, replace=not distinct)
    first, second = [], []
    for opinion in opinions:
        templates = rng.choice(len(PARAPHRASE_TEMPLATES), size=2, replace=False)
        first.append(_wording(OPINIONS[opinion], PARAPHRASE_TEMPLATES[templates[0]], filler_fraction, rng))
        second.append(_wording(OPINIONS[opinion], PARAPHRASE_TEMPLATES[templates[1]], filler_fraction, rng))
    return ParaphrasePairs(first, second, opinions, paraphrase_vocabulary())


def make_wordings(n: int = 2000, seed: int = 0, filler_fraction: float = 0.5) -> Reviews:
    """``n`` single wordings of opinions drawn with repeats, SimCSE's unlabelled training sentences.

    Returned as a :class:`~clcourse.data.reviews.Reviews` (labels: each opinion's aspect, kept only to evaluate;
    vocabulary: :func:`paraphrase_vocabulary`), so :class:`~clcourse.data.reviews.SentenceLoader` batches them.
    """
    pairs = make_paraphrases(n, seed, filler_fraction, distinct=False)
    aspects = torch.tensor([ASPECTS.index(OPINIONS[i][0]) for i in pairs.opinions], dtype=torch.int64)
    return Reviews(pairs.first, aspects, pairs.vocabulary, word_ids(pairs.first, pairs.vocabulary))


def _pick(rng: np.random.Generator, words) -> str:
    return words[int(rng.integers(len(words)))]


def _wording(opinion: tuple[str, str, str], template: str, filler_fraction: float, rng: np.random.Generator
             ) -> list[str]:
    _, noun, adjective = opinion
    text = template.format(noun=noun, adj=adjective, intensifier=_pick(rng, _INTENSIFIERS),
                           general=_pick(rng, _GENERAL))
    if rng.random() < filler_fraction:
        text = _pick(rng, _PREFIXES) + " " + text
    if rng.random() < filler_fraction:
        text += " " + _pick(rng, _SUFFIXES)
    return text.split()


class PairLoader(EpochLoader):
    """Shuffled batches of paraphrase pairs, for supervised SimCSE ([1], section 4) with :func:`clcourse.train.fit`.

    Epoch e's order is a pure function of ``(seed, e)``; the last incomplete batch is dropped.

    Args:
        pairs: the paraphrases to train on.
        batch_size: B in [2, N]: the other pairs of the batch are the negatives.
        seed: seeds the order.

    Yields:
        ``(first ids [B, L1], second ids [B, L2])`` int64 (0 = padding), row i of each a wording of one opinion.
    """

    def __init__(self, pairs: ParaphrasePairs, batch_size: int, seed: int = 0):
        if not isinstance(pairs, ParaphrasePairs):
            raise ValueError(f"pairs must be ParaphrasePairs (make_paraphrases), got {type(pairs).__name__}")
        if not isinstance(batch_size, int) or not 2 <= batch_size <= len(pairs):
            raise ValueError(f"batch_size must be an int in [2, {len(pairs)}] (the pairs; the batch's other pairs "
                             f"are the negatives), got {batch_size!r}")
        self.images, self.second = pairs.ids()  # EpochLoader's name for the rows it counts
        self.batch_size, self.drop_last, self.seed, self.epoch = batch_size, True, seed, 0

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.images), generator=epoch_generators(self.seed, epoch)[0])
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            first, second = self.images[index], self.second[index]
            yield first[:, :int((first != 0).sum(1).max())], second[:, :int((second != 0).sum(1).max())]
