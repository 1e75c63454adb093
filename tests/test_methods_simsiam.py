import pytest
import torch

from clcourse.encoders import SmallCNN
from clcourse.methods.simsiam import SimSiam
from clcourse.noncontrastive_losses import simsiam_loss


def make_model(**kw):
    torch.manual_seed(0)
    return SimSiam(SmallCNN(1, width=8, out_dim=16), projection_dim=8, **kw)


def test_training_step_is_the_symmetric_loss_of_predictions_and_projections():
    model = make_model().eval()
    x1, x2 = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    z1, z2 = model.project(x1), model.project(x2)
    expected = simsiam_loss(model.predictor(z1), model.predictor(z2), z1, z2)
    assert torch.allclose(model.training_step(([x1, x2], None)), expected, atol=1e-6)
    assert model.predictor.net[0].out_features == 2  # the bottleneck: a quarter of the projection


def test_the_stop_gradient_keeps_the_targets_out_and_its_ablation_lets_them_in():
    model = make_model().eval()
    z = model.project(torch.rand(8, 1, 16, 16)).detach()

    def gradient(loss_of):
        leaf = z.clone().requires_grad_()
        p1, p2 = model.predictor(leaf).chunk(2)
        z1, z2 = leaf.chunk(2)
        loss_of(p1, p2, z1, z2).backward()
        return leaf.grad

    def by_hand(p1, p2, z1, z2):  # D(p, z) = -cos(p, z.detach()), written out
        cos = torch.nn.functional.cosine_similarity
        return -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2

    held = gradient(simsiam_loss)
    assert torch.allclose(held, gradient(by_hand), atol=1e-7)  # only through the predictions
    free = gradient(lambda *a: simsiam_loss(*a, stop_gradient=False))
    assert not torch.allclose(held, free, atol=1e-5)  # the ablation: the targets are pulled too


def test_a_step_trains_the_encoder_and_bad_batches_are_named():
    model = make_model()
    loss = model.training_step(([torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)], None))
    loss.backward()
    assert -1.0 <= loss.item() <= 1.0 and model.encoder.fc.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="SimSiam"):
        model.training_step(([torch.rand(4, 1, 16, 16)], None))


def test_a_fixed_predictor_lr_puts_the_predictor_in_a_group_of_its_own():
    plain, fixed = make_model(), make_model(fixed_predictor_lr=True)
    assert [len(g["params"]) for g in plain.parameter_groups()] == [len(list(plain.parameters()))]
    rest, predictor = fixed.parameter_groups()
    assert predictor["fixed_lr"] and predictor["params"] == list(fixed.predictor.parameters())
    assert not rest.get("fixed_lr") and len(rest["params"]) + len(predictor["params"]) == len(list(fixed.parameters()))


def test_projection_batch_norm_standardises_the_projections_in_training():
    model = make_model(projection_batch_norm=True)
    z = model.project(torch.rand(16, 1, 16, 16))
    assert isinstance(model.projector.net[-1], torch.nn.BatchNorm1d) and not model.projector.net[-1].affine
    assert torch.allclose(z.mean(dim=0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(z.var(dim=0, unbiased=False), torch.ones(8), atol=1e-3)
