"""The generated review corpus: reproducible, labelled, overlapping vocabularies, ids that decode to the text."""

import re

import pytest
import torch

from clcourse.data.reviews import (
    _DISTRACTORS,
    _NOUNS,
    _PREFIXES,
    _SUFFIXES,
    ASPECTS,
    HARD,
    NEUTRAL,
    PAD,
    SentenceLoader,
    make_reviews,
)


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
                                              (dict(shared_fraction=-0.1), "shared_fraction"),
                                              (dict(distractor_fraction=2.0), "distractor_fraction"),
                                              (dict(filler_fraction=-1.0), "filler_fraction")])
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        make_reviews(**options)


def test_the_harder_options_add_distractors_fillers_and_shared_nouns_and_keep_the_labels():
    plain, hard = make_reviews(2000, seed=0, **{**HARD, "distractor_fraction": 0.0, "filler_fraction": 0.0,
                                                "shared_noun_fraction": 0.0}), make_reviews(2000, seed=0, **HARD)
    assert hard.sentences == make_reviews(2000, seed=0, **HARD).sentences  # reproducible
    assert hard.mask.sum(dim=1).float().mean() > plain.mask.sum(dim=1).float().mean() + 2  # fillers, clauses
    openers = "|".join(p.split()[0] for p in _DISTRACTORS)
    with_distractor = 0
    for sentence, label in zip(hard.sentences, hard.labels.tolist()):
        text = " ".join(sentence)
        if label == NEUTRAL:
            continue
        # a distractor names another aspect's noun with a general opinion; the sentence keeps its own label
        others = {noun for a in ASPECTS if a != ASPECTS[label] for noun in _NOUNS[a]}
        with_distractor += any(m.group(1) in others for m in re.finditer(rf"(?:{openers}) the (\w+) was ", text))
    aspect_sentences = int((hard.labels >= 0).sum())
    assert 0.06 * aspect_sentences < with_distractor < 0.14 * aspect_sentences  # HARD: 10% of them
    prefixed = sum(any(" ".join(s).startswith(p + " ") for p in _PREFIXES) for s in hard.sentences)
    suffixed = sum(any(" ".join(s).endswith(" " + p) for p in _SUFFIXES) for s in hard.sentences)
    assert 0.35 * len(hard) < prefixed < 0.45 * len(hard) and 0.35 * len(hard) < suffixed < 0.45 * len(hard)
    wine = {label for s, label in zip(hard.sentences, hard.labels.tolist()) if "wine" in s}
    assert wine == {ASPECTS.index("food"), ASPECTS.index("price")}  # a shared noun, told apart by its adjective


def test_the_sentence_loader_covers_each_sentence_once_per_epoch_reproducibly_cut_to_the_longest():
    reviews = make_reviews(100, seed=0, **HARD)
    loader = SentenceLoader(reviews.subset(slice(0, 90)), batch_size=32, seed=3)
    assert len(loader) == 2  # the last 26 sentences are dropped: SSCL needs whole batches of negatives
    first = list(loader)
    loader.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, loader))
    assert not all(torch.equal(a, b) for a, b in zip(first, loader))  # epoch 1: another order
    data = reviews.ids[:90]
    seen = [next(i for i in range(90) if torch.equal(data[i, :len(r)], r) and not data[i, len(r):].any())
            for batch in first for r in batch]
    assert len(seen) == 64
    for batch in first:
        assert batch.dtype == torch.int64 and batch.shape[0] == 32 and (batch[:, -1] != 0).any()
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[2, 90\]"):
        SentenceLoader(reviews.subset(slice(0, 90)), batch_size=91)
    with pytest.raises(ValueError, match="must be a Reviews"):
        SentenceLoader(reviews.ids, batch_size=8)
