"""Captions for the handwritten digits, generated from their labels, and the batches of (image, caption) pairs.

A caption names the digit as a numeral ("the digit 7") or as a word ("a handwritten seven"), each template using
one form only. A CLIP-style model [1] trained on them never reads that "7" and "seven" mean the same: it can only
learn it from the images the two forms come with. The zero-shot prompts are held out: known words in
combinations the training captions never have ("the digit seven": "digit" only ever came with numerals), so
classifying by them is not recalling a memorised caption.

[1] Radford et al., Learning Transferable Visual Models From Natural Language Supervision (CLIP), ICML 2021.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from clcourse.data.image_data import ImageData
from clcourse.data.tokens import build_vocabulary, word_ids
from clcourse.data.views import EpochLoader, epoch_generators

__all__ = ["CaptionLoader", "NUMBER_WORDS", "TRAINING_TEMPLATES", "ZERO_SHOT_TEMPLATES", "caption_vocabulary",
           "captions"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {numeral} is "7", {word} is "seven"; each template uses one of the two.
TRAINING_TEMPLATES = (
    "the digit {numeral}",
    "a bold {numeral}",
    "a small {numeral}",
    "the figure {numeral}",
    "a handwritten {word}",
    "the number {word}",
    "a {word} written by hand",
    "a scanned {word}",
)
# Held out of training: the same words, the other form of the digit after each.
ZERO_SHOT_TEMPLATES = (
    "the digit {word}",
    "a handwritten {numeral}",
    "the number {numeral}",
    "a bold {word}",
)


def caption_vocabulary() -> list[str]:
    """Every word of every template and digit name, padding first; the same list on every call."""
    words = " ".join(TRAINING_TEMPLATES + ZERO_SHOT_TEMPLATES).split()
    words = [w for w in words if w not in ("{numeral}", "{word}")]
    return build_vocabulary(words + [str(d) for d in range(10)] + list(NUMBER_WORDS))


def _check_templates(templates: Sequence[str]) -> None:
    if len(templates) == 0 or any(("{numeral}" in t) == ("{word}" in t) for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings, each with exactly one of {{numeral}} or "
                         f"{{word}}, got {list(templates)!r}")


def captions(labels: Tensor, templates: Sequence[str], choice: Tensor | None = None) -> list[list[str]]:
    """The caption of each digit label [N] in 0..9: template ``choice[i]`` (int [N]; default 0) filled with it."""
    _check_templates(templates)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor [N] of digits, got {labels!r}")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise ValueError(f"labels must be digits 0..9, got values from {int(labels.min())} to {int(labels.max())}")
    choice = torch.zeros_like(labels) if choice is None else choice
    return [templates[int(c)].format(numeral=str(int(d)), word=NUMBER_WORDS[int(d)]).split()
            for d, c in zip(labels, choice)]


class CaptionLoader(EpochLoader):
    """Shuffled batches of digit images with a caption each, its template drawn afresh every epoch.

    Epoch e's order and templates are a pure function of ``(seed, e)``; the last incomplete batch is dropped.

    Args:
        data: images [N, 1, H, W] with digit labels (:func:`clcourse.data.load_digits`).
        batch_size: B, at least 2 (the other pairs are the negatives) and at most N.
        templates: the caption templates to draw from (default :data:`TRAINING_TEMPLATES`).
        seed: seeds the order and the templates.

    Yields:
        ``(images [B, 1, H, W], caption ids int64 [B, L])``, ids over :func:`caption_vocabulary` (0 = padding).
    """

    def __init__(self, data: ImageData, batch_size: int, templates: Sequence[str] = TRAINING_TEMPLATES,
                 seed: int = 0):
        if not isinstance(data, ImageData):
            raise ValueError(f"data must be an ImageData (load_digits), got {type(data).__name__}")
        if not isinstance(batch_size, int) or not 2 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be an int in [2, {len(data)}] (the images; the other pairs of the "
                             f"batch are the negatives), got {batch_size!r}")
        _check_templates(templates)
        self.images, self.labels, self.templates = data.images, data.labels, tuple(templates)
        self.vocabulary = caption_vocabulary()
        self.batch_size, self.drop_last, self.seed, self.epoch = batch_size, True, seed, 0

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order_generator, template_generator = epoch_generators(self.seed, epoch)
        order = torch.randperm(len(self.images), generator=order_generator)
        choice = torch.randint(len(self.templates), (len(self.images),), generator=template_generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            text = captions(self.labels[index], self.templates, choice[index])
            yield self.images[index], word_ids(text, self.vocabulary)
