"""CLIP: the training step is the symmetric InfoNCE of the two projections at the learnt temperature, which starts
at 0.07, learns through its log and stops at a logit scale of 100; bad batches and settings are named."""

import math

import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.losses import clip_loss
from clcourse.methods.clip import CLIP
from clcourse.text_encoders import TransformerSentenceEncoder

IMAGES = torch.rand(4, 1, 8, 8)
IDS = torch.tensor([[3, 5, 2, 0], [4, 4, 1, 6], [1, 2, 0, 0], [6, 5, 4, 3]])


def _model(**kwargs):
    torch.manual_seed(0)
    return CLIP(SmallCNN(1, width=8, out_dim=16), TransformerSentenceEncoder(7, dim=16, dropout=0.0), 12, **kwargs)


def test_training_step_is_clip_loss_of_the_two_projections():
    model = _model().eval()
    torch.testing.assert_close(model.learnt_temperature(), torch.tensor(0.07))
    images, texts = model.embed_images(IMAGES), model.embed_texts(IDS)
    assert images.shape == texts.shape == (4, 12)
    torch.testing.assert_close(model.training_step((IMAGES, IDS)), clip_loss(images, texts, 0.07))
    torch.testing.assert_close(model(IMAGES), model.encoder(IMAGES))  # the representation is before the projection


def test_every_part_learns_the_temperature_included():
    model = _model().train()
    model.training_step((IMAGES, IDS)).backward()
    for name in ("encoder.features", "projector", "text_encoder.words", "text_projector", "log_logit_scale"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name


def test_logit_scale_is_clipped_at_100():
    model = _model()
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(500.0))
    torch.testing.assert_close(model.learnt_temperature(), torch.tensor(0.01))
    model.training_step((IMAGES, IDS)).backward()
    assert model.log_logit_scale.grad == 0  # beyond the clip the scale gets no gradient


@pytest.mark.parametrize("batch, message", [
    ((IMAGES, IDS[:3]), r"one caption per image: ids \[4, L\]"),
    ((IMAGES[:, :, 0], IDS), r"\[B, C, H, W\]"),
])
def test_bad_batches_are_named(batch, message):
    with pytest.raises(ValueError, match=message):
        _model().training_step(batch)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="at least 1 / 100"):
        _model(temperature=0.001)
    with pytest.raises(ValueError, match="temperature"):
        _model(temperature=-1.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        CLIP(SmallCNN(1), TransformerSentenceEncoder(7), embedding_dim=0)
