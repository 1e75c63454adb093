"""CLIP: an image encoder and a text encoder trained so that an image and its caption meet in one space.

Each side is encoded and linearly projected into a shared space; over a batch of N (image, caption) pairs the
N x N matrix of cosine similarities should have its largest entries on the diagonal, in every row (an image finds
its caption) and every column (a caption finds its image): the symmetric InfoNCE
:func:`clcourse.losses.clip_loss` [1]. The temperature is learnt, through its logarithm, from 0.07, and the logit
scale 1 / t is clipped at 100 ([1], section 2.5). After training, a class is recognised by the caption that
describes it best, with no classifier trained: zero-shot classification (:mod:`clcourse.retrieval`).

[1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), ICML 2021.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clcourse.checks import check_images, check_number
from clcourse.losses import clip_loss
from clcourse.methods.base import Method

__all__ = ["CLIP"]

MAX_LOGIT_SCALE = 100.0  # [1], section 2.5: the logits are never scaled by more than 100


class CLIP(Method):
    """Image encoder + text encoder, each with a linear projection, and a learnt temperature [1].

    Args:
        image_encoder: maps images [B, C, H, W] to [B, image_encoder.out_dim] (kept and evaluated as ``encoder``).
        text_encoder: maps word ids [B, L] to [B, text_encoder.out_dim].
        embedding_dim: E, the size of the shared space.
        temperature: the initial temperature, 0.07 in [1].

    A batch is ``(images [B, C, H, W], caption ids int64 [B, L])``, B >= 2, caption i describing image i.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embedding_dim: int = 32,
                 temperature: float = 0.07):
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        temperature = check_number("temperature", temperature)
        if temperature < 1 / MAX_LOGIT_SCALE:
            raise ValueError(f"temperature must be at least 1 / {MAX_LOGIT_SCALE:g} (the clipped logit scale), "
                             f"got {temperature}")
        super().__init__(image_encoder, nn.Linear(image_encoder.out_dim, embedding_dim, bias=False),
                         gather_distributed=None)
        self.text_encoder = text_encoder
        self.text_projector = nn.Linear(text_encoder.out_dim, embedding_dim, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def learnt_temperature(self) -> Tensor:
        """The current temperature t = 1 / min(exp(log_logit_scale), 100), a scalar with gradient."""
        return torch.exp(-self.log_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)))

    def embed_images(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] -> their points in the shared space [B, E] (not normalised)."""
        return self.project(images)

    def embed_texts(self, ids: Tensor) -> Tensor:
        """Caption ids [B, L] -> their points in the shared space [B, E] (not normalised)."""
        return self.text_projector(self.text_encoder(ids))

    def training_step(self, batch) -> Tensor:
        """The symmetric InfoNCE of a batch ``(images, caption ids)`` at the learnt temperature."""
        images, ids = batch
        check_images(images)
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != images.shape[0]:
            got = list(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"CLIP expects one caption per image: ids [{images.shape[0]}, L], got {got}")
        return clip_loss(self.embed_images(images), self.embed_texts(ids), self.learnt_temperature())
