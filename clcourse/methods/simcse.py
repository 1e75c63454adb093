"""Unsupervised SimCSE: a sentence and itself, seen through two dropout masks, are the positive pair.

Text has no crop or colour jitter that surely keeps the meaning: deleting or replacing a word may change it.
SimCSE [1] takes the smallest augmentation there is: pass each sentence of the batch twice through the encoder
in training mode, so that two independent dropout masks give two embeddings h_i and h_i'. Each h_i must pick h_i'
out of the batch's N second embeddings (InfoNCE, [1] section 3, temperature 0.05):

    l_i = -log( exp(cos(h_i, h_i') / t) / sum_j exp(cos(h_i, h_j') / t) ),

which is :func:`clcourse.losses.paired_info_nce`. With the dropout off, both passes are identical: the positive
is matched trivially and only the push away from the other sentences is left (p = 0 in [1]'s dropout ablation).

Supervised SimCSE ([1], section 4) keeps the loss and changes the positive: h_i' encodes another sentence that
means the same (entailment pairs of NLI datasets there; paraphrases here). [1] adds the contradicting sentence as
a hard negative, which this implementation leaves out.

[1] Gao et al., SimCSE: Simple Contrastive Learning of Sentence Embeddings, EMNLP 2021.
"""

from __future__ import annotations

from torch import Tensor, nn

from clcourse.losses import paired_info_nce
from clcourse.methods.base import Method
from clcourse.text_encoders import check_word_ids

__all__ = ["SimCSE"]


class SimCSE(Method):
    """A sentence encoder trained with dropout as the augmentation [1].

    Args:
        encoder: maps word ids [B, L] to [B, encoder.out_dim] with dropout inside
            (:class:`clcourse.text_encoders.TransformerSentenceEncoder`).
        projector: the head the loss sees; None (the default) = none. [1] trains with a one-layer MLP on the
            [CLS] vector and drops it for evaluation.
        temperature: t > 0 of the InfoNCE, 0.05 in [1].

    A batch is word ids int64 [B, L] (0 = padding), B >= 2 sentences: the other sentences are the negatives; or,
    for supervised SimCSE, a pair ``(ids [B, L1], paraphrase ids [B, L2])`` whose rows i mean the same.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module | None = None, temperature: float = 0.05):
        super().__init__(encoder, projector, temperature=temperature, gather_distributed=None)

    def training_step(self, batch) -> Tensor:
        """InfoNCE between two passes of the batch [B, L] (the dropout masks differ, the sentences do not), or
        between a batch and its paraphrases ``(ids, paraphrase ids)``."""
        sentences, positives = batch if isinstance(batch, (tuple, list)) else (batch, None)
        vocab_size = getattr(self.encoder, "vocab_size", None)
        for ids in (sentences,) if positives is None else (sentences, positives):
            check_word_ids(ids, int(ids.max()) + 1 if vocab_size is None else vocab_size)
        if sentences.shape[0] < 2 or (positives is not None and positives.shape[0] != sentences.shape[0]):
            raise ValueError(f"SimCSE needs at least 2 sentences per batch (the negatives) and one positive per "
                             f"sentence, got {sentences.shape[0]} sentences"
                             + ("" if positives is None else f" and {positives.shape[0]} positives"))
        if positives is None and not self.training:
            raise RuntimeError("SimCSE.training_step needs training mode: in eval mode dropout is off and the two "
                               "passes are identical; call .train() first")
        return paired_info_nce(self.project(sentences), self.project(sentences if positives is None else positives),
                               self.temperature)
