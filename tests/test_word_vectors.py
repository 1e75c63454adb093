"""Skip-gram word vectors: the pairs, reproducibility, and words of one aspect ending closer than across aspects."""

import pytest
import torch
import torch.nn.functional as F

from clcourse.data.reviews import make_reviews
from clcourse.word_vectors import skipgram_pairs, train_word_vectors


def test_pairs_are_every_neighbour_within_the_window_and_skip_padding():
    ids = torch.tensor([[1, 2, 3, 0]])
    pairs = {tuple(p) for p in skipgram_pairs(ids, window=1).tolist()}
    assert pairs == {(1, 2), (2, 1), (2, 3), (3, 2)}
    assert len(skipgram_pairs(ids, window=2)) == 6  # adds (1, 3) and (3, 1)


def test_words_of_one_aspect_end_closer_than_words_of_two():
    reviews = make_reviews(2000, seed=0)
    vectors = train_word_vectors(reviews.ids, len(reviews.vocab), dim=24, seed=0)
    assert vectors.shape == (len(reviews.vocab), 24) and vectors[0].abs().sum() == 0
    v = {w: vectors[reviews.vocab.index(w)] for w in ("pizza", "pasta", "waiter", "staff", "bill", "overpriced")}
    cos = lambda a, b: F.cosine_similarity(v[a], v[b], dim=0).item()  # noqa: E731
    assert cos("pizza", "pasta") > cos("pizza", "waiter") + 0.2
    assert cos("waiter", "staff") > cos("waiter", "bill") + 0.2
    again = train_word_vectors(reviews.ids, len(reviews.vocab), dim=24, seed=0)
    assert torch.equal(vectors, again)


@pytest.mark.parametrize("ids, vocab_size, message", [
    (torch.zeros(3, dtype=torch.int64), 5, r"int64 tensor \[N, L\]"),
    (torch.tensor([[1, 7]]), 5, r"\[0, vocab_size\) = \[0, 5\)"),
    (torch.tensor([[1, 0]]), 5, "no pair of words"),
])
def test_bad_input_is_named(ids, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        train_word_vectors(ids, vocab_size)
