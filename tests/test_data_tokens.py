"""Word-level tokens: the padding first, ids that decode to the sentences, named errors."""

import pytest
import torch

from clcourse.data.tokens import PAD, build_vocabulary, word_ids


def test_vocabulary_is_padding_then_words_in_first_appearance_order():
    assert build_vocabulary(["b", "a", "b", PAD, "c"]) == [PAD, "b", "a", "c"]


def test_ids_decode_to_the_sentences_padded_with_zero():
    vocabulary = build_vocabulary("the soup was cold the waiter".split())
    sentences = [["the", "soup", "was", "cold"], ["the", "waiter"]]
    ids = word_ids(sentences, vocabulary)
    assert ids.dtype == torch.int64 and ids.shape == (2, 4)
    assert ids[1, 2:].tolist() == [0, 0]
    assert [[vocabulary[i] for i in row if i] for row in ids.tolist()] == sentences


@pytest.mark.parametrize("sentences, message", [
    ([], "at least one sentence"),
    ([["the"], []], "sentence 1 is empty"),
    ([["the", "pizza"]], r"sentence 0 has words outside the vocabulary: \['pizza'\]"),
    ([["the", PAD]], "outside the vocabulary"),
])
def test_bad_sentences_are_named(sentences, message):
    with pytest.raises(ValueError, match=message):
        word_ids(sentences, build_vocabulary(["the", "soup"]))
