"""The sentence encoders: shapes, padding that changes nothing, dropout as the only randomness, the baselines'
closed forms, and named errors for bad word ids."""

import pytest
import torch

from clcourse.text_encoders import TransformerSentenceEncoder, bag_of_words, check_word_ids, mean_of_embeddings

IDS = torch.tensor([[3, 5, 2, 0, 0], [4, 4, 1, 6, 2]])


def test_transformer_shapes_and_token_vectors():
    torch.manual_seed(0)
    encoder = TransformerSentenceEncoder(7, dim=16, layers=2, heads=4, max_length=8).eval()
    assert encoder(IDS).shape == (2, 16) and encoder.out_dim == 16
    tokens = encoder.token_vectors(IDS)
    assert tokens.shape == (2, 5, 16)
    # the sentence vector is the mean of its words' vectors, the padding left out
    torch.testing.assert_close(encoder(IDS)[0], tokens[0, :3].mean(dim=0))


def test_padding_changes_nothing_and_each_sentence_is_encoded_alone():
    torch.manual_seed(0)
    encoder = TransformerSentenceEncoder(7, dim=16, layers=2, heads=2, max_length=10).eval()
    with torch.no_grad():
        padded = encoder(torch.cat([IDS, torch.zeros(2, 4, dtype=torch.long)], dim=1))
        alone = torch.cat([encoder(IDS[:1, :3]), encoder(IDS[1:])])
    torch.testing.assert_close(padded, encoder(IDS).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, encoder(IDS).detach(), atol=1e-5, rtol=1e-5)


def test_dropout_is_the_only_randomness():
    torch.manual_seed(0)
    encoder = TransformerSentenceEncoder(7, dim=16, dropout=0.1)
    encoder.train()
    assert not torch.allclose(encoder(IDS), encoder(IDS))  # two masks, two vectors: SimCSE's two views
    encoder.eval()
    torch.testing.assert_close(encoder(IDS), encoder(IDS))
    still = TransformerSentenceEncoder(7, dim=16, dropout=0.0).train()
    torch.testing.assert_close(still(IDS), still(IDS))


def test_word_order_matters_only_through_the_positions():
    torch.manual_seed(0)
    encoder = TransformerSentenceEncoder(7, dim=16).eval()
    reordered = torch.tensor([[2, 3, 5, 0, 0]])
    with torch.no_grad():
        assert not torch.allclose(encoder(IDS[:1]), encoder(reordered))
        encoder.positions.weight.zero_()  # without positions self-attention and the mean ignore the order
        torch.testing.assert_close(encoder(IDS[:1]), encoder(reordered), atol=1e-5, rtol=1e-5)


def test_bag_of_words_counts_the_words_and_not_the_padding():
    counts = bag_of_words(IDS, 7)
    expected = torch.tensor([[0, 0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 2, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(counts, expected)


def test_mean_of_embeddings_is_the_mean_of_the_words_rows():
    table = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    got = mean_of_embeddings(IDS, table)
    torch.testing.assert_close(got[0], table[[3, 5, 2]].mean(dim=0))
    torch.testing.assert_close(got[1], table[[4, 4, 1, 6, 2]].mean(dim=0))


@pytest.mark.parametrize("ids, message", [
    ([[1, 2]], "torch.Tensor"),
    (torch.tensor([[1.0, 2.0]]), "integer tensor"),
    (torch.tensor([1, 2]), r"\[B, L\]"),
    (torch.tensor([[1, 7]]), r"in \[0, 7\)"),
    (torch.tensor([[1, -1]]), r"in \[0, 7\)"),
    (torch.tensor([[1, 2], [0, 0]]), r"rows \[1\] are all padding"),
    (torch.ones(1, 9, dtype=torch.long), "at most 8 words"),
])
def test_bad_word_ids_are_named(ids, message):
    with pytest.raises((TypeError, ValueError), match=message):
        check_word_ids(ids, 7, max_length=8)
    with pytest.raises((TypeError, ValueError), match=message):
        TransformerSentenceEncoder(7, dim=8, heads=2, max_length=8)(ids)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="divisible by heads"):
        TransformerSentenceEncoder(7, dim=10, heads=4)
    with pytest.raises(ValueError, match="dropout is a probability"):
        TransformerSentenceEncoder(7, dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        TransformerSentenceEncoder(0)
    with pytest.raises(ValueError, match=r"table must be a floating-point tensor \[V, D\]"):
        mean_of_embeddings(IDS, torch.ones(7, dtype=torch.long))
