import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.methods.byol import BYOL
from clcourse.noncontrastive_losses import byol_loss


def make_model(**kw):
    torch.manual_seed(0)
    return BYOL(SmallCNN(1, width=8, out_dim=16), projection_dim=8, **kw)


def test_training_step_predicts_the_targets_projections():
    model = make_model().eval()
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    p1, p2 = model.predictor(model.project(x1)), model.predictor(model.project(x2))
    t1, t2 = (model.target_projector(model.target_encoder(x)) for x in (x1, x2))
    assert torch.allclose(model.training_step(([x1, x2], None)), byol_loss(p1, p2, t1, t2), atol=1e-6)


def test_the_target_gets_no_gradient_and_follows_with_momentum():
    model = make_model(momentum=0.9)
    loss = model.training_step(([torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)], None))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())
    assert model.encoder.fc.weight.grad.abs().sum() > 0 and model.predictor.net[0].weight.grad is not None
    before = model.target_encoder.fc.weight.clone()
    with torch.no_grad():
        model.encoder.fc.weight.add_(1.0)
    model.on_step_end()
    expected = 0.9 * before + 0.1 * model.encoder.fc.weight
    assert torch.allclose(model.target_encoder.fc.weight, expected, atol=1e-6)


def test_momentum_is_checked():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        make_model(momentum=1.5)
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0"):
        make_model(momentum=-0.1)
