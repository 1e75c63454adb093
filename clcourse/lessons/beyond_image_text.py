"""Lesson 18, image-text: CLIP [1] on the 8x8 digits and captions generated from their labels.

A :class:`~clcourse.encoders.SmallCNN` reads the images, a :class:`~clcourse.text_encoders.TransformerSentenceEncoder`
the captions (:mod:`clcourse.data.captions`, a template drawn afresh for every image and epoch); the symmetric
InfoNCE pulls each pair together. Measured on the test digits: zero-shot accuracy with held-out prompts (the mean
text embedding of the four :data:`~clcourse.data.captions.ZERO_SHOT_TEMPLATES` per digit), and recall@1 both
ways between the test images and one held-out caption each (right = the caption names the image's digit).
Baselines: the untrained model, and, for scale, a supervised linear probe on the trained image features and on
raw pixels. Budgets are in steps.

[1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), ICML 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clcourse.data.captions import ZERO_SHOT_TEMPLATES, CaptionLoader, caption_vocabulary, captions
from clcourse.data.digits import load_digits
from clcourse.data.image_data import ImageData
from clcourse.data.tokens import word_ids
from clcourse.device import seed_everything
from clcourse.encoders import SmallCNN
from clcourse.evaluate import extract_features, linear_probe
from clcourse.methods.clip import CLIP
from clcourse.retrieval import recall_at_k, zero_shot_predict
from clcourse.text_encoders import TransformerSentenceEncoder
from clcourse.train import eval_mode, fit

__all__ = ["ImageTextSettings", "build_clip", "class_prompt_embeddings", "evaluate_clip", "image_probe", "pixel_probe",
           "train_clip"]


@dataclass(frozen=True)
class ImageTextSettings:
    """The image-text experiment's settings (benchmarks/README.md, "Lesson 18: sentences and image-text")."""

    steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    image_width: int = 16
    text_dim: int = 32
    text_layers: int = 1
    embedding_dim: int = 32
    temperature: float = 0.07


def build_clip(seed: int, settings: ImageTextSettings = ImageTextSettings()) -> CLIP:
    """The untrained model of ``seed``: SmallCNN on 8x8 digits, a small Transformer on captions, projections."""
    seed_everything(seed)
    image_encoder = SmallCNN(1, width=settings.image_width, out_dim=4 * settings.image_width, pool_size=2)
    text_encoder = TransformerSentenceEncoder(len(caption_vocabulary()), settings.text_dim, settings.text_layers,
                                              heads=4)
    return CLIP(image_encoder, text_encoder, settings.embedding_dim, settings.temperature)


def train_clip(seed: int, settings: ImageTextSettings = ImageTextSettings(), *, progress: bool = False) -> CLIP:
    """CLIP trained for ``settings.steps`` steps on the training digits with training captions; eval mode, CPU."""
    model = build_clip(seed, settings)
    loader = CaptionLoader(load_digits(8, "train"), settings.batch_size, seed=seed)
    fit(model, loader, steps=settings.steps, lr=settings.lr, device="cpu", progress=progress)
    return model.eval()


@torch.no_grad()
def class_prompt_embeddings(model: CLIP, templates=ZERO_SHOT_TEMPLATES) -> torch.Tensor:
    """One unit vector per digit [10, E]: the mean over ``templates`` of the normalised prompt embeddings."""
    digits = torch.arange(10)
    with eval_mode(model):
        per_template = [F.normalize(model.embed_texts(word_ids(captions(digits, [t]), caption_vocabulary())), dim=1)
                        for t in templates]
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=1)


@torch.no_grad()
def evaluate_clip(model: CLIP, test: ImageData | None = None, *, caption_seed: int = 0) -> dict[str, float]:
    """Zero-shot accuracy and recall@1 both ways on ``test`` (default: the test digits), each in [0, 1].

    Every test image gets one caption from a held-out template drawn with ``caption_seed``.
    """
    test = load_digits(8, "test") if test is None else test
    generator = torch.Generator().manual_seed(caption_seed)
    choice = torch.randint(len(ZERO_SHOT_TEMPLATES), (len(test),), generator=generator)
    ids = word_ids(captions(test.labels, ZERO_SHOT_TEMPLATES, choice), caption_vocabulary())
    with eval_mode(model):
        images, texts = model.embed_images(test.images), model.embed_texts(ids)
    predicted = zero_shot_predict(images, class_prompt_embeddings(model))
    labels = dict(query_labels=test.labels, candidate_labels=test.labels)
    return {
        "zero-shot accuracy": float((predicted == test.labels).float().mean()),
        "image -> text recall@1": recall_at_k(images, texts, **labels),
        "text -> image recall@1": recall_at_k(texts, images, **labels),
    }


def image_probe(model: CLIP) -> float:
    """Test accuracy of a logistic regression on the model's image features (before the projection), all labels."""
    train, test = load_digits(8, "train"), load_digits(8, "test")
    train_x, train_y = extract_features(model.encoder, train)
    test_x, test_y = extract_features(model.encoder, test)
    return linear_probe(train_x, train_y, test_x, test_y).mean


def pixel_probe() -> float:
    """Test accuracy of the same logistic regression on the raw 64 pixels."""
    train, test = load_digits(8, "train"), load_digits(8, "test")
    return linear_probe(train.images.flatten(1), train.labels, test.images.flatten(1), test.labels).mean
