"""SSCL: the contrastive loss against a loop and in closed form, the penalty, smooth attention, the mapping, and a
short training run that finds the aspects of the generated reviews."""

import math

import pytest
import torch
import torch.nn.functional as F

from clcourse.clustering import kmeans
from clcourse.data.reviews import make_reviews
from clcourse.methods.sscl import SSCL, map_aspects, orthogonality_penalty, sentence_contrast
from clcourse.word_vectors import train_word_vectors


def loop_contrast(r, z, margin=None):
    r, z = r.double(), z.double()
    total = 0.0
    for s in range(len(r)):
        cos = [F.cosine_similarity(r[s], z[n], dim=0) for n in range(len(z))]
        others = [cos[n] for n in range(len(z)) if n != s]
        if margin is None:
            total += -cos[s] + torch.log(sum(torch.exp(c) for c in others))
        else:
            total += sum(torch.clamp(margin - cos[s] + c, min=0) for c in others)
    return total / len(r)


@pytest.mark.parametrize("margin", [None, 1.0])
def test_the_loss_matches_a_loop(margin):
    g = torch.Generator().manual_seed(0)
    r, z = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.testing.assert_close(sentence_contrast(r, z, margin).double(), loop_contrast(r, z, margin), rtol=1e-5,
                               atol=1e-6)


def test_when_every_sentence_looks_alike_the_loss_is_log_of_the_negatives():
    r = torch.ones(5, 3)
    assert sentence_contrast(r, r.clone()).item() == pytest.approx(math.log(4), abs=1e-6)  # -1 + log(4 e)
    assert sentence_contrast(r, r.clone(), margin=1.0).item() == pytest.approx(4.0)  # 4 negatives at the margin
    with pytest.raises(ValueError, match="B >= 2"):
        sentence_contrast(r[:1], r[:1])


def test_the_penalty_is_zero_for_orthogonal_aspects_and_grows_with_their_overlap():
    assert orthogonality_penalty(3 * torch.eye(4)).item() == pytest.approx(0.0, abs=1e-6)
    assert orthogonality_penalty(torch.ones(4, 2)).item() == pytest.approx(math.sqrt(12), rel=1e-6)  # K(K - 1) ones


def model(vocab=9, dim=4, aspects=3, **kw):
    torch.manual_seed(0)
    words = torch.randn(vocab, dim)
    words[0] = 0
    return SSCL(words, torch.randn(aspects, dim), **kw)


def test_attention_is_smooth_sums_to_one_and_ignores_padding():
    sscl = model(smooth=0.5)
    with torch.no_grad():
        sscl.encoder.kernel.weight.mul_(100)  # huge logits: tanh bounds them to [-0.5, 0.5]
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0]])
    attention, sentences = sscl.encoder.attend(ids)
    assert torch.all(attention[ids == 0] == 0)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))
    words = attention[0, :4]
    assert words.max() / words.min() <= math.exp(1.0) + 1e-5  # at most e^(2 lambda) apart
    padded = sscl.encoder(torch.cat([ids, torch.zeros(2, 3, dtype=torch.int64)], dim=1))
    torch.testing.assert_close(padded, sentences)
    with pytest.raises(ValueError, match="at least one word"):
        sscl.encoder(torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(ValueError, match="int64 tensor"):
        sscl.encoder(ids.float())


def test_without_negatives_each_sentence_is_fitted_alone():
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    alone = model(contrastive=False, orthogonality=0.0)
    one_by_one = (alone.training_step(ids[:1]) + alone.training_step(ids[1:])) / 2
    torch.testing.assert_close(alone.training_step(ids), one_by_one)  # the other sentence plays no part
    with pytest.raises(ValueError, match="B >= 2"):
        model().training_step(ids[:1])  # with negatives, a sentence needs others


def test_the_mapping_takes_the_clear_majority_and_leaves_the_rest_general():
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    gold = torch.tensor([2, 2, 1, 0, 1, 3, 0, -1, -1])
    assert map_aspects(predicted, gold, 4).tolist() == [2, 0, -1, -1]  # aspect 1 is half 0s: kept at 0.5
    assert map_aspects(predicted, gold, 4, min_share=0.6).tolist() == [2, -1, -1, -1]  # aspect 0 is 2/3 2s
    assert map_aspects(predicted, gold, 4, min_share=0.7).tolist() == [-1, -1, -1, -1]


def test_a_short_run_finds_the_aspects_and_the_negatives_are_what_finds_them():
    reviews = make_reviews(2000, seed=0)
    vectors = train_word_vectors(reviews.ids, len(reviews.vocab), dim=24, seed=0)
    centroids, _ = kmeans(vectors[1:], 12, seed=0)
    train, test = slice(0, 1500), slice(1500, None)
    labelled = reviews.labels[test] >= 0

    def accuracy(**options):
        sscl = SSCL(vectors, centroids, **options)
        optimizer = torch.optim.Adam(sscl.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            loss = sscl.training_step(reviews.ids[torch.randint(0, 1500, (64,), generator=g)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        mapping = map_aspects(sscl.predict(reviews.ids[train]), reviews.labels[train], 12)
        right = mapping[sscl.predict(reviews.ids[test])] == reviews.labels[test]
        return right[labelled].float().mean().item()

    with_negatives, without = accuracy(), accuracy(contrastive=False)
    assert with_negatives > 0.9 and with_negatives > without + 0.15, (with_negatives, without)
