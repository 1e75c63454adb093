"""Retrieval and zero-shot classification by cosine similarity of embeddings.

Retrieval: every query ranks the candidates by cosine similarity; recall@k is the share of queries with a right
candidate among their k most similar. "Right" is either the query's own partner (candidate i for query i: a
sentence's paraphrase, an image's own caption) or any candidate of the query's class (a caption that names the
image's digit). Zero-shot classification [1] is retrieval among one text embedding per class: the class whose
prompt is most similar to the image.

[1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), ICML 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clcourse.checks import check_labels, check_tensor, shape_of

__all__ = ["cosine_similarities", "recall_at_k", "zero_shot_predict"]


def cosine_similarities(queries: Tensor, candidates: Tensor) -> Tensor:
    """Cosine similarity of every query with every candidate: [N, D], [M, D] -> [N, M] (float32 at least)."""
    check_tensor("queries", queries, "[N, D]")
    check_tensor("candidates", candidates, "[M, D]")
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries and candidates must have the same width D, got {shape_of(queries)} and "
                         f"{shape_of(candidates)}")
    dtype = torch.float64 if torch.float64 in (queries.dtype, candidates.dtype) else torch.float32
    return F.normalize(queries.to(dtype), dim=1) @ F.normalize(candidates.to(dtype), dim=1).t()


def recall_at_k(queries: Tensor, candidates: Tensor, k: int = 1, *, query_labels: Tensor | None = None,
                candidate_labels: Tensor | None = None) -> float:
    """The share of queries with a right candidate among their ``k`` most similar (cosine), in [0, 1].

    Shapes: queries [N, D], candidates [M, D]. Without labels, candidate i is query i's only right one (M = N).
    With query_labels [N] and candidate_labels [M], every candidate of the query's label is right. Ties in
    similarity are broken towards the lower index, as ``torch.topk`` does.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    similarities = cosine_similarities(queries, candidates)
    n, m = similarities.shape
    if k > m:
        raise ValueError(f"k must be at most the number of candidates ({m}), got {k}")
    if (query_labels is None) != (candidate_labels is None):
        raise ValueError("give both query_labels and candidate_labels, or neither")
    top = similarities.topk(k, dim=1).indices  # [N, k]
    if query_labels is None:
        if n != m:
            raise ValueError(f"without labels candidate i is query i's partner, so N = M is needed, got "
                             f"{shape_of(queries)} and {shape_of(candidates)}")
        right = top == torch.arange(n, device=top.device).unsqueeze(1)
    else:
        check_labels(query_labels, n, "query")
        check_labels(candidate_labels, m, "candidate")
        right = candidate_labels.to(top.device)[top] == query_labels.to(top.device).unsqueeze(1)
    return float(right.any(dim=1).float().mean())


def zero_shot_predict(embeddings: Tensor, class_embeddings: Tensor) -> Tensor:
    """The class whose embedding is most similar to each input: [N, D], [C, D] -> int64 [N] in [0, C).

    ``class_embeddings`` row c is the text embedding of class c's prompt (or the mean over several prompts, CLIP's
    prompt ensembling [1], section 3.1.4).
    """
    return cosine_similarities(embeddings, class_embeddings).argmax(dim=1)
