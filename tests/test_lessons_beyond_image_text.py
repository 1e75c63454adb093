"""Lesson 18's image-text experiment at a small budget: the untrained model is at chance, a short CLIP training
classifies the test digits zero-shot far above it, and the evaluation's pieces have the right shapes."""

import torch

from clcourse.lessons.beyond_image_text import (
    ImageTextSettings,
    build_clip,
    class_prompt_embeddings,
    evaluate_clip,
    train_clip,
)

SMALL = ImageTextSettings(steps=60)


def test_class_prompts_are_one_unit_vector_per_digit():
    prompts = class_prompt_embeddings(build_clip(0, SMALL))
    assert prompts.shape == (10, SMALL.embedding_dim)
    torch.testing.assert_close(prompts.norm(dim=1), torch.ones(10))


def test_short_training_beats_the_untrained_model_by_far():
    untrained = evaluate_clip(build_clip(0, SMALL).eval())
    assert set(untrained) == {"zero-shot accuracy", "image -> text recall@1", "text -> image recall@1"}
    assert untrained["zero-shot accuracy"] < 0.3
    trained = evaluate_clip(train_clip(0, SMALL))
    assert trained["zero-shot accuracy"] > untrained["zero-shot accuracy"] + 0.4
    assert trained["image -> text recall@1"] > 0.5
