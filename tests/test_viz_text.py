"""Sentences coloured by a weight per word (lesson 16's attention)."""

import re

import numpy as np
import pytest
import torch

from clcourse.viz.text import highlighted_sentences

ALPHA = re.compile(r"rgba\(\d+, \d+, \d+, ([0-9.]+)\)")


def test_each_word_gets_its_weight_relative_to_the_row_and_padding_is_ignored():
    weights = torch.tensor([[0.1, 0.4, 0.5, 9.0], [0.2, 0.2, 0.0, 0.0]])  # 9.0 and the zeros are padding
    page = highlighted_sentences([["the", "waiter", "was"], ["cheap", "bill"]], weights, ["service", "price"])
    assert [float(a) for a in ALPHA.findall(page)] == [0.2, 0.8, 1.0, 1.0, 1.0]
    assert page.count("<tr>") == 2 and "<b>service</b>" in page and 'title="0.400"' in page
    assert "9.000" not in page


def test_a_fixed_scale_compares_rows_and_caps_at_full_strength():
    page = highlighted_sentences([["a", "b"]], np.array([[0.25, 2.0]]), scale=1.0)
    assert [float(a) for a in ALPHA.findall(page)] == [0.25, 1.0]


def test_words_and_labels_are_escaped_and_nothing_is_loaded():
    page = highlighted_sentences([["<script>", "&"]], torch.ones(1, 2), ["a<b"])
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page and "a&lt;b" in page
    assert "http" not in page and "src=" not in page


def test_an_all_zero_row_is_drawn_without_dividing_by_zero():
    page = highlighted_sentences([["x", "y"]], torch.zeros(1, 2))
    assert [float(a) for a in ALPHA.findall(page)] == [0.0, 0.0]


@pytest.mark.parametrize("sentences, weights, labels, scale, message", [
    ([["a"]], torch.ones(2, 1), None, None, "one row per sentence"),
    ([["a", "b", "c"]], torch.ones(1, 2), None, None, "longest sentence has 3 words"),
    ([["a"]], torch.full((1, 1), float("nan")), None, None, "finite"),
    ([["a"]], -torch.ones(1, 1), None, None, ">= 0"),
    ([["a"]], torch.ones(1, 1), ["x", "y"], None, "one string per sentence"),
    ([["a"]], torch.ones(1, 1), None, 0.0, "scale must be > 0"),
    ([["a"]], torch.ones(3), None, None, "\\[N, L\\]"),
])
def test_bad_input_says_what_was_expected(sentences, weights, labels, scale, message):
    with pytest.raises(ValueError, match=message):
        highlighted_sentences(sentences, weights, labels, scale=scale)
