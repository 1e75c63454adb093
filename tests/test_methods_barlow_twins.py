import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.methods.barlow_twins import BarlowTwins
from clcourse.noncontrastive_losses import barlow_twins_loss


def make_model(**kw):
    torch.manual_seed(0)
    return BarlowTwins(SmallCNN(1, width=8, out_dim=16), projection_dim=12, **kw)


def test_training_step_is_the_loss_of_the_two_views_projections():
    model = make_model(off_diagonal_weight=0.01).eval()
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    expected = barlow_twins_loss(model.project(x1), model.project(x2), 0.01)
    assert torch.allclose(model.training_step(([x1, x2], None)), expected, atol=1e-5)


def test_a_step_trains_the_encoder_and_bad_settings_are_named():
    model = make_model()
    loss = model.training_step(([torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)], None))
    loss.backward()
    assert loss.item() >= 0 and model.encoder.fc.weight.grad.abs().sum() > 0
    assert model.projector.out_dim == 12
    with pytest.raises(ValueError, match="off_diagonal_weight"):
        make_model(off_diagonal_weight=-1.0)
