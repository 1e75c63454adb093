import pytest
import torch
from torch import nn

from clcourse.encoders import SmallCNN
from clcourse.losses import nt_xent, supcon
from clcourse.methods.supcon import SupCon, unlabelled_as_own_class


class LinearEncoder(nn.Module):
    """A batch-norm-free encoder: projecting views one by one or together gives the same
    vectors, and they differ clearly between images (an untrained CNN maps random images
    to nearly parallel vectors, where every loss looks alike)."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_model(encoder=None, **kw):
    torch.manual_seed(0)
    return SupCon(encoder or LinearEncoder(), projection_dim=8, **kw)


def views(n=6, v=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 16, 16, generator=g) for _ in range(v)]


def projections(model, xs):
    """[B, V, D]: the projections of every view, sample-major."""
    return torch.stack([model.project(x) for x in xs], dim=1)


def test_distinct_labels_give_simclrs_nt_xent():
    model = make_model(temperature=0.2)
    xs = views()
    z = projections(model, xs)
    expected = nt_xent(z[:, 0], z[:, 1], 0.2)
    assert torch.allclose(model.training_step((xs, torch.arange(6))), expected, atol=1e-5)
    assert torch.allclose(model.training_step((xs, None)), expected, atol=1e-5)


def test_unsupervised_flag_ignores_the_labels():
    model = make_model(supervised=False)
    xs = views()
    z = projections(model, xs)
    loss = model.training_step((xs, torch.zeros(6, dtype=torch.long)))
    assert torch.allclose(loss, nt_xent(z[:, 0], z[:, 1], model.temperature), atol=1e-5)


def test_loss_is_supcon_of_all_views_with_the_labels():
    model = make_model(temperature=0.3)
    xs, labels = views(v=3), torch.tensor([0, 1, 0, 2, 1, 0])
    expected = supcon(projections(model, xs), labels, 0.3, "out")
    assert torch.allclose(model.training_step((xs, labels)), expected, atol=1e-5)


def test_out_and_in_differ_in_general_and_agree_with_one_positive_per_anchor():
    out, inside = make_model(variant="out"), make_model(variant="in")
    xs = views()
    shared = torch.tensor([0, 0, 0, 1, 1, 2])  # three positives for some anchors
    assert not torch.allclose(out.training_step((xs, shared)), inside.training_step((xs, shared)), atol=1e-4)
    distinct = torch.arange(6)  # with 2 views, each anchor's only positive is its other view
    assert torch.allclose(out.training_step((xs, distinct)), inside.training_step((xs, distinct)), atol=1e-5)


def test_unlabelled_images_become_classes_of_their_own():
    assert unlabelled_as_own_class(torch.tensor([0, -1, 2, -1])).tolist() == [0, 3, 2, 4]
    assert unlabelled_as_own_class(torch.tensor([-1, -1])).tolist() == [0, 1]
    assert unlabelled_as_own_class(torch.tensor([1, 0])).tolist() == [1, 0]


def test_partially_labelled_batch_pulls_classmates_together_and_unlabelled_only_to_their_views():
    model = make_model()
    xs = views()
    labels = torch.tensor([0, -1, 0, -1, 1, 1])
    z = projections(model, xs)
    expected = supcon(z, torch.tensor([0, 10, 0, 11, 1, 1]), model.temperature)
    assert torch.allclose(model.training_step((xs, labels)), expected, atol=1e-5)
    all_unlabelled = model.training_step((xs, torch.full((6,), -1)))
    assert torch.allclose(all_unlabelled, nt_xent(z[:, 0], z[:, 1], model.temperature), atol=1e-5)


def test_one_view_with_labels_uses_classmates_only():
    model = make_model()
    (x,) = xs = views(v=1)
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    expected = supcon(model.project(x), torch.tensor([0, 0, 1, 1, 2, 3]), model.temperature)
    assert torch.allclose(model.training_step((xs, labels)), expected, atol=1e-5)


def test_gradients_reach_encoder_and_head():
    model = make_model(SmallCNN(1, width=8, out_dim=16))
    model.training_step((views(), torch.tensor([0, 1, 0, 1, 2, 2]))).backward()
    assert model.encoder.fc.weight.grad.abs().sum() > 0
    assert model.projector.net[-1].weight.grad.abs().sum() > 0


def test_forward_returns_features_before_the_head():
    model = make_model()
    assert model(views(3)[0]).shape == (3, 16)
    assert model.project(views(3)[0]).shape == (3, 8)


def test_bad_labels():
    model = make_model()
    xs = views()
    with pytest.raises(ValueError, match=r"labels must have shape \[6\]"):
        model.training_step((xs, torch.zeros(6, 1, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"labels must have shape \[6\]"):
        model.training_step((xs, torch.zeros(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="integer"):
        model.training_step((xs, torch.zeros(6)))
    with pytest.raises(ValueError, match="-1 for unlabelled"):
        model.training_step((xs, torch.tensor([0, 1, -2, 0, 1, 1])))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.training_step((xs, [0, 1, 0, 1, 0, 1]))


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        make_model(temperature=0)
    with pytest.raises(ValueError, match="variant"):
        make_model(variant="mid")
    model = make_model()
    with pytest.raises(ValueError, match="at least 1 view"):
        model.training_step(([], None))
    with pytest.raises(ValueError, match="same shape"):
        model.training_step((views(6) + views(5), None))
    with pytest.raises(ValueError, match="at least 2 views"):
        model.training_step((views(v=1), None))
