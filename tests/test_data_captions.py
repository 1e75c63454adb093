"""Digit captions: each template names the digit in one form, the zero-shot prompts are new combinations of known
words, and the loader pairs every image with a caption of its own digit, drawn afresh each epoch."""

import pytest
import torch

from clcourse.data.captions import (
    NUMBER_WORDS,
    TRAINING_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    CaptionLoader,
    caption_vocabulary,
    captions,
)
from clcourse.data.digits import load_digits


def test_captions_fill_the_template_with_the_numeral_or_the_word():
    labels = torch.tensor([7, 0])
    assert captions(labels, ["the digit {numeral}"]) == [["the", "digit", "7"], ["the", "digit", "0"]]
    assert captions(labels, ["x {numeral}", "a handwritten {word}"], torch.tensor([1, 0])) == [
        ["a", "handwritten", "seven"], ["x", "0"]]


def test_zero_shot_prompts_are_held_out_but_use_only_known_words():
    training_words = {w for t in TRAINING_TEMPLATES for w in t.split()}
    assert not set(ZERO_SHOT_TEMPLATES) & set(TRAINING_TEMPLATES)
    for template in ZERO_SHOT_TEMPLATES:
        assert set(template.split()) <= training_words  # every word seen in training, the combination never
        # the words before the digit came with the digit's other form only
        prefix = template.split("{")[0]
        other = "{word}" if "{numeral}" in template else "{numeral}"
        assert any(t.startswith(prefix) and other in t for t in TRAINING_TEMPLATES)
    vocabulary = caption_vocabulary()
    assert vocabulary[0] == "<pad>" and set(NUMBER_WORDS) <= set(vocabulary) and "7" in vocabulary


def test_loader_pairs_each_image_with_a_caption_of_its_digit():
    data = load_digits(8, "train")
    loader = CaptionLoader(data, batch_size=64, seed=1)
    vocabulary = caption_vocabulary()
    images, ids = next(iter(loader))
    assert images.shape == (64, 1, 8, 8) and ids.dtype == torch.int64 and ids.shape[0] == 64
    for image, row in zip(images, ids):
        label = int(data.labels[(data.images == image).flatten(1).all(dim=1)][0])
        words = [vocabulary[i] for i in row.tolist() if i]
        assert str(label) in words or NUMBER_WORDS[label] in words
    assert len(loader) == len(data) // 64


def test_loader_draws_new_templates_every_epoch_and_replays_an_epoch():
    loader = CaptionLoader(load_digits(8, "train"), batch_size=128, seed=0)
    first, second = list(loader), list(loader)
    assert any(not torch.equal(a[1], b[1]) if a[1].shape == b[1].shape else True for a, b in zip(first, second))
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, loader))


@pytest.mark.parametrize("call, message", [
    (lambda: captions(torch.tensor([10]), TRAINING_TEMPLATES), r"digits 0\.\.9"),
    (lambda: captions(torch.tensor([1.0]), TRAINING_TEMPLATES), "integer tensor"),
    (lambda: captions(torch.tensor([1]), ["no digit here"]), "exactly one of"),
    (lambda: captions(torch.tensor([1]), ["{numeral} or {word}"]), "exactly one of"),
    (lambda: CaptionLoader(load_digits(8, "test"), batch_size=1), r"batch_size must be an int in \[2, 540\]"),
    (lambda: CaptionLoader(torch.zeros(4, 1, 8, 8), batch_size=2), "ImageData"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
