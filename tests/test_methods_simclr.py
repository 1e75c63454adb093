import math

import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.losses import nt_xent
from clcourse.methods import SimCLR


def make_model(**kw):
    torch.manual_seed(0)
    return SimCLR(SmallCNN(1, width=8, out_dim=16), projection_dim=8, **kw)


def test_training_step_is_nt_xent_of_the_projections():
    model = make_model(temperature=0.2)
    model.eval()  # fixed batch-norm statistics so both computations agree
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    loss = model.training_step(([x1, x2], torch.zeros(6)))
    z = model.project(torch.cat([x1, x2]))
    assert torch.allclose(loss, nt_xent(z[:6], z[6:], 0.2))


def test_identical_views_of_one_image_give_log_2n_minus_1():
    model = make_model()
    model.eval()
    x = torch.rand(1, 1, 16, 16).repeat(5, 1, 1, 1)  # every projection identical
    loss = model.training_step(([x, x], None))
    assert loss.item() == pytest.approx(math.log(2 * 5 - 1), abs=1e-4)


def test_forward_returns_features_before_the_head():
    model = make_model()
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 16)
    assert model.project(torch.rand(3, 1, 16, 16)).shape == (3, 8)


def test_gradients_reach_encoder_and_head():
    model = make_model()
    loss = model.training_step(([torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)], None))
    loss.backward()
    assert model.encoder.fc.weight.grad.abs().sum() > 0
    assert model.projector.net[-1].weight.grad.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        make_model(temperature=0)
    model = make_model()
    with pytest.raises(ValueError, match="2 views"):
        model.training_step(([torch.rand(2, 1, 16, 16)], None))
    with pytest.raises(ValueError, match="same shape"):
        model.training_step(([torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 16)], None))
