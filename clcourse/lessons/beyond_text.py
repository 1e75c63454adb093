"""Lesson 18, sentences: SimCSE [1] on generated review wordings, measured by paraphrase retrieval.

A small Transformer (:class:`clcourse.text_encoders.TransformerSentenceEncoder`) is trained with SimCSE on
single wordings of opinions (:func:`clcourse.data.paraphrases.make_wordings`), then asked, for each of N
sentences, which of N candidate sentences is its paraphrase (:func:`clcourse.data.paraphrases.make_paraphrases`,
a fixed evaluation set): recall@1. Baselines: word counts (bag of words), the mean of random word vectors, the
untrained Transformer, and SimCSE with its dropout off (identical views). Budgets are in steps.

[1] Gao et al., SimCSE: Simple Contrastive Learning of Sentence Embeddings, EMNLP 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clcourse.data.paraphrases import PairLoader, ParaphrasePairs, make_paraphrases, make_wordings
from clcourse.data.reviews import SentenceLoader
from clcourse.device import seed_everything
from clcourse.methods.simcse import SimCSE
from clcourse.retrieval import recall_at_k
from clcourse.text_encoders import TransformerSentenceEncoder, bag_of_words, mean_of_embeddings
from clcourse.train import eval_mode, fit

__all__ = ["EVALUATION_SEED", "TextSettings", "evaluation_pairs", "paraphrase_recall", "text_baselines", "train_simcse",
           "train_supervised_simcse"]

EVALUATION_SEED = 1000  # the evaluation pairs, the same for every training seed (training corpora use seeds 0, 1, ...)


@dataclass(frozen=True)
class TextSettings:
    """The sentence experiment's settings (benchmarks/README.md, "Lesson 18: sentences and image-text")."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    dim: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    temperature: float = 0.05
    training_sentences: int = 2000
    evaluation_pairs: int = 200


def _encoder(vocab_size: int, settings: TextSettings, dropout: float) -> TransformerSentenceEncoder:
    return TransformerSentenceEncoder(vocab_size, settings.dim, settings.layers, settings.heads, dropout=dropout)


def evaluation_pairs(settings: TextSettings = TextSettings()) -> ParaphrasePairs:
    """The fixed evaluation set: ``settings.evaluation_pairs`` distinct opinions, each worded twice."""
    return make_paraphrases(settings.evaluation_pairs, EVALUATION_SEED)


@torch.no_grad()
def paraphrase_recall(encode, pairs: ParaphrasePairs) -> float:
    """Recall@1 of each first wording's paraphrase among all N second wordings, in [0, 1].

    ``encode`` maps word ids [N, L] to embeddings [N, D] (an encoder, or a baseline function).
    """
    first, second = pairs.ids()
    if isinstance(encode, torch.nn.Module):
        with eval_mode(encode):
            return recall_at_k(encode(first), encode(second))
    return recall_at_k(encode(first), encode(second))


def train_simcse(seed: int, settings: TextSettings = TextSettings(), *, dropout: float | None = None,
                 progress: bool = False) -> TransformerSentenceEncoder:
    """A Transformer trained with SimCSE for ``settings.steps`` steps on the wordings of corpus ``seed``.

    ``dropout`` overrides ``settings.dropout``; 0 gives SimCSE's "no dropout" ablation (identical views).
    Returns the encoder, in eval mode, on the CPU.
    """
    seed_everything(seed)
    corpus = make_wordings(settings.training_sentences, seed)
    encoder = _encoder(len(corpus.vocab), settings, settings.dropout if dropout is None else dropout)
    method = SimCSE(encoder, temperature=settings.temperature)
    loader = SentenceLoader(corpus, settings.batch_size, seed=seed)
    fit(method, loader, steps=settings.steps, lr=settings.lr, device="cpu", progress=progress)
    return encoder.eval()


def text_baselines(seed: int, pairs: ParaphrasePairs, settings: TextSettings = TextSettings()) -> dict[str, float]:
    """Recall@1 without training: word counts, the mean of random word vectors [V, D] drawn from ``seed``, and the
    untrained Transformer of ``seed``."""
    vocab_size = len(pairs.vocabulary)
    generator = seed_everything(seed)
    table = torch.randn(vocab_size, settings.dim, generator=generator)
    untrained = _encoder(vocab_size, settings, settings.dropout)
    return {
        "bag of words": paraphrase_recall(lambda ids: bag_of_words(ids, vocab_size), pairs),
        "mean of random word vectors": paraphrase_recall(lambda ids: mean_of_embeddings(ids, table), pairs),
        "untrained Transformer": paraphrase_recall(untrained, pairs),
    }


def train_supervised_simcse(seed: int, settings: TextSettings = TextSettings(), *, progress: bool = False
                            ) -> TransformerSentenceEncoder:
    """Supervised SimCSE ([1], section 4): paraphrase pairs of corpus ``seed`` as the positives, same budget.

    ``settings.training_sentences`` pairs of opinions drawn with repeats (their opinions overlap the evaluation's;
    the wordings are fresh). Returns the encoder, in eval mode, on the CPU.
    """
    seed_everything(seed)
    pairs = make_paraphrases(settings.training_sentences, seed, distinct=False)
    encoder = _encoder(len(pairs.vocabulary), settings, settings.dropout)
    method = SimCSE(encoder, temperature=settings.temperature)
    fit(method, PairLoader(pairs, settings.batch_size, seed=seed), steps=settings.steps, lr=settings.lr,
        device="cpu", progress=progress)
    return encoder.eval()
