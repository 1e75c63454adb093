"""SSCL: aspect detection in review sentences, learnt by contrasting a sentence with the others of its batch.

A sentence s of words with fixed word vectors e_1 .. e_L [D] is encoded by *smooth self-attention* [1]:
y = mean_i e_i, d_i = y^T M e_i (M learned), a = softmax(lambda * tanh(d)) over the words, and the sentence
vector z_s = sum_i a_i e_i. The tanh bounds every logit to [-lambda, lambda], so no single word takes all the
attention (lambda = 0.5 in [1]'s code). The sentence is then explained by K aspects: p_s = softmax(W z_s + b)
[K] and the reconstruction r_s = T^T p_s, T [K, D] the aspect matrix, initialised with the k-means centroids of
the word vectors (so each aspect starts as a group of words). Training asks r_s to be nearer (in cosine) to its
own sentence than to the other sentences n of the batch:

    L_s = -cos(r_s, z_s) + log sum_{n != s} exp(cos(r_s, z_n))

(the contrastive loss of [1]'s code, the batch's other sentences as negatives), plus the orthogonality penalty
||T_hat T_hat^T - I||_F of the aspect-based autoencoder [2] (T_hat: T with unit rows), which keeps aspects apart.
The negatives are what makes it contrastive: without them (``contrastive=False``) the loss only pulls r_s
towards z_s, and every sentence can be reconstructed by the same blend of aspects. ``margin`` gives the
max-margin form of [2] instead, sum_n max(0, margin - cos(r_s, z_s) + cos(r_s, z_n)).

A sentence's aspect is argmax p_s. With more aspects K than gold aspects, each learnt aspect is mapped to a gold
one afterwards (:func:`map_aspects`, [1]'s high-resolution selective mapping).

[1] Shi et al., A Simple and Effective Self-Supervised Contrastive Learning Framework for Aspect Detection
    (SSCL), AAAI 2021.
[2] He et al., An Unsupervised Neural Attention Model for Aspect Extraction (ABAE), ACL 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.checks import check_number, shape_of
from clcourse.methods.base import Method

__all__ = ["SSCL", "SentenceEncoder", "map_aspects", "orthogonality_penalty", "sentence_contrast"]


def sentence_contrast(reconstructions: Tensor, sentences: Tensor, margin: float | None = None) -> Tensor:
    """SSCL's loss of reconstructions r [B, D] against sentence vectors z [B, D], row s's negatives the other rows.

    ``margin`` None: mean over s of -cos(r_s, z_s) + log sum_{n != s} exp(cos(r_s, z_n)); a number: ABAE's
    mean over s of sum_{n != s} max(0, margin - cos(r_s, z_s) + cos(r_s, z_n)).
    """
    if reconstructions.ndim != 2 or reconstructions.shape != sentences.shape or reconstructions.shape[0] < 2:
        raise ValueError(f"reconstructions and sentences must both be [B, D] with B >= 2 (the other rows are the "
                         f"negatives), got {shape_of(reconstructions)} and {shape_of(sentences)}")
    cosine = F.normalize(reconstructions, dim=1) @ F.normalize(sentences, dim=1).t()  # [B, B]
    positive = cosine.diagonal()
    others = ~torch.eye(len(cosine), dtype=torch.bool, device=cosine.device)
    if margin is None:
        return (-positive + torch.logsumexp(cosine.masked_fill(~others, float("-inf")), dim=1)).mean()
    hinge = (margin - positive[:, None] + cosine).clamp_min(0.0)
    return (hinge * others).sum(dim=1).mean()


def orthogonality_penalty(aspects: Tensor) -> Tensor:
    """||T_hat T_hat^T - I||_F of aspects T [K, D] with unit rows T_hat: 0 when the aspects are orthogonal."""
    if aspects.ndim != 2:
        raise ValueError(f"aspects must be [K, D], got {shape_of(aspects)}")
    unit = F.normalize(aspects, dim=1)
    return torch.linalg.matrix_norm(unit @ unit.t() - torch.eye(len(unit), device=unit.device))


class SentenceEncoder(nn.Module):
    """Smooth self-attention over fixed word vectors [1]: word ids [B, L] -> sentence vectors z [B, D].

    Args:
        word_vectors: [V, D], row 0 the padding; kept fixed (a buffer), as [1] keeps its word2vec vectors.
        smooth: lambda > 0; attention logits are lambda * tanh(y^T M e_i), so no two words of a sentence get
            weights more than e^(2 lambda) apart.

    ``attend(ids)`` returns the attention [B, L] (0 at the padding) and z; ``forward(ids)`` returns z.
    """

    def __init__(self, word_vectors: Tensor, smooth: float = 0.5):
        super().__init__()
        if not isinstance(word_vectors, Tensor) or word_vectors.ndim != 2:
            raise ValueError(f"word_vectors must be [V, D], got {shape_of(word_vectors)}")
        self.smooth = check_number("smooth", smooth)
        self.register_buffer("word_vectors", word_vectors.detach().float().clone())
        self.out_dim = word_vectors.shape[1]
        self.kernel = nn.Linear(self.out_dim, self.out_dim)  # M

    def attend(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.int64:
            raise ValueError(f"ids must be an int64 tensor [B, L] of word ids (0 = padding), got "
                             f"{shape_of(ids) if isinstance(ids, Tensor) else type(ids).__name__}")
        mask = ids != 0
        if not mask.any(dim=1).all():
            raise ValueError("every sentence needs at least one word (a row of ids is all padding)")
        words = self.word_vectors[ids] * mask[..., None]  # [B, L, D]
        mean = words.sum(dim=1) / mask.sum(dim=1, keepdim=True)  # y
        logits = torch.einsum("bd,bld->bl", mean, self.kernel(words))  # d_i = y^T M e_i
        attention = torch.softmax((self.smooth * torch.tanh(logits)).masked_fill(~mask, float("-inf")), dim=1)
        return attention, torch.einsum("bl,bld->bd", attention, words)

    def forward(self, ids: Tensor) -> Tensor:
        return self.attend(ids)[1]


class SSCL(Method):
    """SSCL [1] (module docstring): the sentence encoder, aspect weights, reconstruction, contrastive loss.

    Args:
        word_vectors: [V, D] fixed word vectors, row 0 the padding.
        aspects: [K, D] the initial aspect matrix T (the k-means centroids of the word vectors in [1]).
        smooth: lambda > 0 of the smooth self-attention (0.5 in [1]'s code).
        orthogonality: weight of the orthogonality penalty on T.
        contrastive: use the batch's other sentences as negatives (False: only pull r_s towards z_s).
        margin: None for [1]'s log-sum-exp loss, a number for the max-margin loss of [2].

    ``encoder`` is the :class:`SentenceEncoder` (ids [B, L] -> z [B, D]); ``outputs(ids)`` returns a dict:
    ``attention`` [B, L], ``sentences`` z [B, D], ``aspect_weights`` p [B, K], ``reconstructions`` r [B, D].
    ``training_step(ids)`` returns the loss (a scalar) and ``predict(ids)`` each sentence's aspect [B].
    """

    def __init__(self, word_vectors: Tensor, aspects: Tensor, smooth: float = 0.5, orthogonality: float = 1.0,
                 contrastive: bool = True, margin: float | None = None):
        encoder = SentenceEncoder(word_vectors, smooth)
        if not isinstance(aspects, Tensor) or aspects.ndim != 2 or aspects.shape[1] != encoder.out_dim:
            raise ValueError(f"aspects must be [K, D] with D = {encoder.out_dim} (the word vectors' size), got "
                             f"{shape_of(aspects)}")
        super().__init__(encoder, nn.Linear(encoder.out_dim, aspects.shape[0]), gather_distributed=None)
        self.orthogonality = check_number("orthogonality", orthogonality, strict=False)
        self.contrastive, self.margin = contrastive, margin
        self.aspects = nn.Parameter(aspects.detach().float().clone())  # T

    def outputs(self, ids: Tensor) -> dict[str, Tensor]:
        attention, sentences = self.encoder.attend(ids)
        weights = torch.softmax(self.projector(sentences), dim=1)  # p = softmax(W z + b)
        return {"attention": attention, "sentences": sentences, "aspect_weights": weights,
                "reconstructions": weights @ self.aspects}

    def training_step(self, batch: Tensor) -> Tensor:
        """The contrastive loss of word ids [B, L] (or, with ``contrastive=False``, -cos(r_s, z_s)) plus the
        weighted orthogonality penalty."""
        out = self.outputs(batch)
        r, z = out["reconstructions"], out["sentences"]
        if self.contrastive:
            fit = sentence_contrast(r, z, self.margin)
        else:
            fit = -F.cosine_similarity(r, z, dim=1).mean()
        return fit + self.orthogonality * orthogonality_penalty(self.aspects)

    @torch.no_grad()
    def predict(self, ids: Tensor) -> Tensor:
        """The most probable aspect of each sentence, int64 [B]."""
        return self.outputs(ids)["aspect_weights"].argmax(dim=1)


def map_aspects(predicted: Tensor, gold: Tensor, num_aspects: int, min_share: float = 0.5) -> Tensor:
    """Map each of ``num_aspects`` learnt aspects to a gold aspect, from a few labelled sentences.

    ``predicted`` [N] learnt aspects and ``gold`` [N] gold labels (-1: about no aspect) of the same sentences.
    A learnt aspect goes to the gold label most of its sentences carry if at least ``min_share`` of them carry
    it, else to -1 ("general"): [1]'s high-resolution selective mapping, which reads the top words of many fine
    aspects and maps only the clear ones. Returns int64 [num_aspects]; ``mapping[predicted]`` labels sentences.
    """
    if predicted.shape != gold.shape or predicted.ndim != 1:
        raise ValueError(f"predicted and gold must both be [N], got {shape_of(predicted)} and {shape_of(gold)}")
    min_share = check_number("min_share", min_share, strict=False)
    mapping = torch.full((num_aspects,), -1, dtype=torch.int64)
    for aspect in range(num_aspects):
        labels = gold[predicted == aspect]
        if len(labels) == 0:
            continue
        values, counts = labels.unique(return_counts=True)
        best = int(counts.argmax())
        if counts[best] >= min_share * len(labels):
            mapping[aspect] = values[best]
    return mapping
