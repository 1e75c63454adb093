"""The generated review corpus: reproducible, labelled, overlapping vocabularies, ids that decode to the text."""

import pytest
import torch

from clcourse.data.reviews import ASPECTS, NEUTRAL, PAD, make_reviews


def test_the_same_seed_gives_the_same_corpus_and_another_seed_another():
    a, b, c = make_reviews(200, seed=0), make_reviews(200, seed=0), make_reviews(200, seed=1)
    assert a.sentences == b.sentences and torch.equal(a.labels, b.labels) and a.vocab == b.vocab
    assert a.sentences != c.sentences


def test_ids_decode_to_the_sentences_and_the_mask_marks_the_words():
    reviews = make_reviews(300, seed=2)
    assert reviews.vocab[0] == PAD and reviews.ids.dtype == torch.int64
    for row, sentence in enumerate(reviews.sentences):
        words = [reviews.vocab[i] for i in reviews.ids[row][reviews.mask[row]]]
        assert words == sentence
    assert reviews.mask.sum(dim=1).tolist() == [len(s) for s in reviews.sentences]


def test_every_aspect_and_the_neutral_share_appear_in_proportion():
    reviews = make_reviews(4000, seed=0, neutral_fraction=0.2)
    neutral = (reviews.labels == NEUTRAL).float().mean().item()
    assert 0.18 < neutral < 0.22
    shares = torch.stack([(reviews.labels == k).float().mean() for k in range(len(ASPECTS))])
    assert torch.allclose(shares, torch.full_like(shares, 0.2), atol=0.02)


def test_aspects_share_words_but_each_has_its_own():
    reviews = make_reviews(4000, seed=0)
    words = {k: {w for s, label in zip(reviews.sentences, reviews.labels.tolist()) if label == k for w in s}
             for k in range(len(ASPECTS))}
    food, service, price, ambience = (words[k] for k in range(4))
    assert {"cold", "slow"} <= food & service and "small" in price & ambience
    assert {"great", "the", "was"} <= food & service & price & ambience  # general and function words
    assert "waiter" in service - food - price - ambience and "overpriced" in price - food - service - ambience


@pytest.mark.parametrize("options, message", [(dict(n=0), "positive int"), (dict(neutral_fraction=1.5), r"\[0, 1\]"),
                                              (dict(shared_fraction=-0.1), "shared_fraction")])
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        make_reviews(**options)
