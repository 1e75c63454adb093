"""Nearest neighbours of embedded points, the kNN vote they cast, and how neighbourhoods change over training.

The embedding explorer (:mod:`clcourse.viz.explorer`) shows them; they rank by cosine similarity, the measure of
the course's kNN evaluation (:func:`clcourse.evaluate.knn_accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .plots import to_numpy


@dataclass(frozen=True)
class Neighbours:
    """Every point's k nearest other points: ``indices`` [N, k], nearest first, and their ``scores`` [N, k].

    ``metric`` names the scores: ``"cosine"`` similarities (higher is nearer) or ``"euclidean"`` distances.
    """

    indices: np.ndarray
    scores: np.ndarray
    metric: str


def nearest_neighbours(
    points: torch.Tensor | np.ndarray, k: int, metric: str = "cosine", chunk: int = 1024
) -> Neighbours:
    """The ``k`` nearest other points of each of ``points`` [N, D]; a point is never its own neighbour.

    ``metric="cosine"`` ranks by cosine similarity, the measure of the course's kNN evaluation;
    ``"euclidean"`` by distance (for 2-D projections). ``chunk`` rows at a time, so a large N needs
    no [N, N] matrix. Returns indices and scores [N, k].
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    x = torch.as_tensor(np.asarray(to_numpy(points), dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"points must have shape [N, D] with N >= 2, got {list(x.shape)}")
    n = len(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an int in [1, {n - 1}] (the other points), got {k!r}")
    cosine = metric == "cosine"
    if cosine:
        x = F.normalize(x, dim=1)
    indices, scores = [], []
    for start in range(0, n, chunk):
        rows = x[start : start + chunk]
        score = rows @ x.T if cosine else torch.cdist(rows, x, compute_mode="donot_use_mm_for_euclid_dist")
        own = torch.arange(len(rows))
        score[own, start + own] = -torch.inf if cosine else torch.inf
        top = score.topk(k, dim=1, largest=cosine)
        indices.append(top.indices.numpy())
        scores.append(top.values.numpy())
    return Neighbours(np.concatenate(indices), np.concatenate(scores), metric)


def knn_vote(neighbour_indices: np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each point's label as its neighbours vote: the most frequent label among its row of ``neighbour_indices``.

    ``neighbour_indices`` [N, k], nearest first (as :func:`nearest_neighbours` returns them); ``labels`` [N].
    A tie goes to the label of the nearest tied voter. Returns [N] labels.
    """
    labels = to_numpy(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    votes = codes.reshape(-1)[neighbour_indices]  # [N, k]
    is_class = votes[:, :, None] == np.arange(len(classes))  # [N, k, C]
    counts = is_class.sum(axis=1)
    k = neighbour_indices.shape[1]
    nearest_voter = np.where(counts > 0, is_class.argmax(axis=1), k)
    return classes[np.argmax(counts * (k + 1) - nearest_voter, axis=1)]  # counts first, nearness breaks ties


def new_neighbour_counts(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """How many of each point's neighbours in ``after`` [N, k] are not among its neighbours in ``before`` [N, k].

    Returns [N] ints in [0, k].
    """
    if before.shape != after.shape:
        raise ValueError(f"before and after must have the same shape [N, k], got {list(before.shape)} "
                         f"and {list(after.shape)}")
    kept = (after[:, :, None] == before[:, None, :]).any(axis=2)
    return after.shape[1] - kept.sum(axis=1)
