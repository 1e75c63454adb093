"""Paraphrase pairs: reproducible, two different templates around one opinion, distinct opinions, every word in
the shared vocabulary; the training wordings and the pair loader."""

import pytest
import torch

from clcourse.data.paraphrases import (
    OPINIONS,
    PARAPHRASE_TEMPLATES,
    PairLoader,
    make_paraphrases,
    make_wordings,
    paraphrase_vocabulary,
)
from clcourse.data.reviews import _GENERAL, _INTENSIFIERS, _PREFIXES, ASPECTS, SentenceLoader


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others():
    a, b, c = make_paraphrases(50, seed=0), make_paraphrases(50, seed=0), make_paraphrases(50, seed=1)
    assert a.first == b.first and a.second == b.second and (a.opinions == b.opinions).all()
    assert a.first != c.first


def _skeleton(words, noun, adjective):
    """The template a filler-free wording was made from: its opinion and optional words put back as fields."""
    text = f" {' '.join(words)} ".replace(f" {noun} ", " {noun} ").replace(f" {adjective} ", " {adj} ")
    for intensifier in _INTENSIFIERS:
        text = text.replace(f" {intensifier} ", " {intensifier} ")
    for general in _GENERAL:
        text = text.replace(f" {general} evening", " {general} evening")
    return text.strip()


def test_both_wordings_state_the_opinion_with_two_different_templates():
    pairs = make_paraphrases(100, seed=3, filler_fraction=0.0)
    assert len(set(pairs.opinions.tolist())) == 100  # distinct: one right candidate per query
    for first, second, opinion in zip(pairs.first, pairs.second, pairs.opinions):
        _, noun, adjective = OPINIONS[opinion]
        templates = [_skeleton(first, noun, adjective), _skeleton(second, noun, adjective)]
        assert all(t in PARAPHRASE_TEMPLATES for t in templates) and templates[0] != templates[1]


def test_filler_goes_around_the_wording():
    plain, filled = make_paraphrases(300, seed=3, filler_fraction=0.0), make_paraphrases(300, seed=3)
    assert not any(" ".join(w).startswith(tuple(_PREFIXES)) for w in plain.first)
    share = sum(" ".join(w).startswith(tuple(_PREFIXES)) for w in filled.first) / 300
    assert 0.4 < share < 0.6  # filler_fraction 0.5


def test_every_word_is_in_the_fixed_vocabulary():
    vocabulary = paraphrase_vocabulary()
    assert vocabulary == paraphrase_vocabulary() and vocabulary[0] == "<pad>"
    pairs = make_paraphrases(389, seed=4)
    first, second = pairs.ids()
    assert first.dtype == torch.int64 and int(first.max()) < len(vocabulary)
    decoded = [[vocabulary[i] for i in row if i] for row in second.tolist()]
    assert decoded == pairs.second


def test_opinions_are_each_aspects_nouns_with_its_adjectives():
    assert len(OPINIONS) == 389 and {aspect for aspect, _, _ in OPINIONS} == set(ASPECTS)


def test_wordings_are_labelled_by_aspect_and_batch_with_the_sentence_loader():
    corpus = make_wordings(120, seed=5)
    assert len(corpus) == 120 and corpus.vocab == paraphrase_vocabulary()
    for words, label in zip(corpus.sentences[:20], corpus.labels[:20]):
        nouns = [noun for aspect, noun, _ in OPINIONS if aspect == ASPECTS[int(label)]]
        assert any(noun in words for noun in nouns)
    batch = next(iter(SentenceLoader(corpus, batch_size=32, seed=0)))
    assert batch.shape[0] == 32


def test_pair_loader_keeps_the_pairs_together_and_replays_an_epoch():
    pairs = make_paraphrases(40, seed=6)
    partner = {" ".join(a): " ".join(b) for a, b in zip(pairs.first, pairs.second)}
    loader = PairLoader(pairs, batch_size=16, seed=2)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    for a, b in batches:
        assert (a[:, -1] != 0).any() and (b[:, -1] != 0).any()  # each side cut to its longest sentence
        for row_a, row_b in zip(a.tolist(), b.tolist()):
            decoded_a, decoded_b = (" ".join(pairs.vocabulary[i] for i in row if i) for row in (row_a, row_b))
            assert partner[decoded_a] == decoded_b
    loader.set_epoch(0)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(loader, batches))


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "positive int"),
    (dict(n=390), "389 distinct opinions"),
    (dict(filler_fraction=1.5), r"filler_fraction must be in \[0, 1\]"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_paraphrases(**kwargs)


def test_bad_loader_settings_are_named():
    with pytest.raises(ValueError, match="ParaphrasePairs"):
        PairLoader(make_wordings(10), batch_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[2, 10\]"):
        PairLoader(make_paraphrases(10), batch_size=11)
