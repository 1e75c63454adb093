"""Retrieval and zero-shot classification: recall@k on hand-made similarities, labels, ties and errors."""

import pytest
import torch

from clcourse.retrieval import cosine_similarities, recall_at_k, zero_shot_predict


def test_cosine_similarities_are_normalised_dot_products():
    q, c = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    torch.testing.assert_close(cosine_similarities(q, c), torch.tensor([[0.6, 0.8, -0.6]]))


def test_recall_counts_queries_whose_partner_ranks_in_the_top_k():
    queries = torch.eye(4)
    # query 0 and 1 find their partners; query 2's partner is beaten by candidate 3; query 3 finds candidate 2
    candidates = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.5, 1.0], [0, 0, 1.0, 0.5]])
    assert recall_at_k(queries, candidates) == pytest.approx(0.5)
    assert recall_at_k(queries, candidates, k=2) == pytest.approx(1.0)
    assert recall_at_k(queries, queries) == 1.0


def test_recall_with_labels_accepts_any_candidate_of_the_query_class():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    labels = dict(query_labels=torch.tensor([5, 5]), candidate_labels=torch.tensor([5, 3, 5]))
    assert recall_at_k(queries, candidates, **labels) == pytest.approx(0.5)  # query 1's nearest is of class 3
    assert recall_at_k(queries, candidates, k=2, **labels) == pytest.approx(1.0)


def test_zero_shot_picks_the_most_similar_class():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    inputs = torch.tensor([[2.0, 0.1], [0.1, 5.0], [-3.0, -1.0]])
    assert zero_shot_predict(inputs, classes).tolist() == [0, 1, 2]


@pytest.mark.parametrize("call, message", [
    (lambda: recall_at_k(torch.eye(3), torch.eye(2, 3)), "N = M"),
    (lambda: recall_at_k(torch.eye(3), torch.eye(3), k=4), "at most the number of candidates"),
    (lambda: recall_at_k(torch.eye(3), torch.eye(3), k=0), "positive int"),
    (lambda: recall_at_k(torch.eye(3), torch.eye(3, 2)), "same width D"),
    (lambda: recall_at_k(torch.eye(3), torch.eye(3), query_labels=torch.arange(3)), "both"),
    (lambda: recall_at_k(torch.eye(3), torch.eye(3), query_labels=torch.arange(2), candidate_labels=torch.arange(3)),
     r"shape \[3\]"),
    (lambda: zero_shot_predict(torch.eye(3).long(), torch.eye(3)), "floating-point"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
