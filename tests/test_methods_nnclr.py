"""NNCLR (clcourse.methods.nnclr) and its loss: nearest neighbours from the support set, eq. 3, queue order, resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader
from clcourse.losses import paired_info_nce
from clcourse.methods import NNCLR, Method
from clcourse.train import fit


class LinearEncoder(nn.Module):
    """Batch-norm-free, so that projections computed apart equal those inside a training step."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_model(**kw):
    torch.manual_seed(0)
    kw.setdefault("support_size", 32)
    kw.setdefault("head_layers", 1)  # no batch norm in the projector: z can be recomputed exactly
    kw.setdefault("projection_dim", 8)
    return NNCLR(LinearEncoder(), **kw)


def views(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 1, 16, 16, generator=g), torch.rand(b, 1, 16, 16, generator=g)], None


def projections_and_predictions(model, batch):
    """z1, z2, p1, p2 as a training step computes them (one pass over both views)."""
    (x1, x2), _ = batch
    z1, z2 = model.project(torch.cat([x1, x2])).chunk(2)
    p1, p2 = model.predictor(torch.cat([z1, z2])).chunk(2)
    return z1, z2, p1, p2


def loop_loss(neighbours, predictions, t):
    """[1] eq. 3 in float64, one sample at a time: -log exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t)."""
    nn_, p = F.normalize(neighbours.double(), dim=1), F.normalize(predictions.double(), dim=1)
    total = 0.0
    for i in range(len(nn_)):
        logits = [torch.dot(nn_[i], p[k]) / t for k in range(len(p))]
        total += -(logits[i] - torch.logsumexp(torch.stack(logits), dim=0))
    return total / len(nn_)


def loop_neighbours(z, support):
    """NN(z, Q) by an explicit search: for each z the support row of largest cosine, in float64."""
    z, support = F.normalize(z.double(), dim=1), F.normalize(support.double(), dim=1)
    rows = []
    for zi in z:
        best = max(range(len(support)), key=lambda j: torch.dot(zi, support[j]).item())
        rows.append(support[best])
    return torch.stack(rows)


# --------------------------------------------------------------------------- the loss


def test_paired_info_nce_is_the_loop_over_samples_in_float64():
    g = torch.Generator().manual_seed(0)
    anchors, candidates = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g,
                                                                                            dtype=torch.float64)
    torch.testing.assert_close(paired_info_nce(anchors, candidates, 0.2), loop_loss(anchors, candidates, 0.2))
    # the denominator runs over the candidates of one anchor (a row), not over the anchors of one candidate
    transposed = F.cross_entropy(F.normalize(candidates, dim=1) @ F.normalize(anchors, dim=1).T / 0.2,
                                 torch.arange(6))
    assert not torch.allclose(paired_info_nce(anchors, candidates, 0.2), transposed)


def test_paired_info_nce_closed_forms():
    same = torch.ones(5, 3)
    # every similarity equal: the partner is one of N equally likely candidates
    torch.testing.assert_close(paired_info_nce(same, same, 0.1), torch.tensor(math.log(5)))
    one_hot = torch.eye(4)
    assert paired_info_nce(one_hot, one_hot, 0.01) < 1e-6  # orthogonal rows, each matching only its partner


# --------------------------------------------------------------------------- the nearest neighbour


def test_the_neighbour_is_the_argmax_by_cosine_on_a_hand_made_support_set():
    model = make_model(projection_dim=3, support_size=4)
    support = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [3.0, 4.0, 0.0]])
    model.update_support_set(support)
    torch.testing.assert_close(model.support_set, F.normalize(support, dim=1))  # stored as unit vectors
    queries = torch.tensor([
        [0.9, 0.1, 0.0],   # closest to row 0
        [0.5, 0.9, 0.0],   # cos 0.99 with row 3, 0.87 with row 1 (Euclidean distance to the raw (3, 4, 0) would pick row 1)
        [20.0, 1.0, 0.0],  # far from every row in Euclidean distance: only the direction counts
        [0.1, -0.1, -5.0],  # opposite to row 2: the least dissimilar of the others, row 0 (cos 0.02 > -0.004)
    ])
    expected = model.support_set[[0, 3, 0, 0]]
    torch.testing.assert_close(model.nearest_neighbours(queries), expected)
    torch.testing.assert_close(model.nearest_neighbours(queries).double(), loop_neighbours(queries, support))


def test_the_neighbour_of_a_projection_is_usually_another_image():
    model = make_model(support_size=8)
    first, second = views(8, seed=0), views(8, seed=1)
    z_first = projections_and_predictions(model, first)[0].detach()
    model.update_support_set(z_first)
    z = projections_and_predictions(model, second)[0].detach()
    neighbours = model.nearest_neighbours(z)
    torch.testing.assert_close(neighbours.double(), loop_neighbours(z, z_first))
    # the positive of image i of the second batch is a projection of an image of the first batch, not z_i itself
    assert (F.cosine_similarity(neighbours, z, dim=1) < 1 - 1e-3).all()
    assert all(any(torch.allclose(n, s) for s in F.normalize(z_first, dim=1)) for n in neighbours)


def test_an_empty_support_set_gives_each_projection_itself():
    model = make_model()
    z = torch.randn(5, 8)
    torch.testing.assert_close(model.nearest_neighbours(z), F.normalize(z, dim=1))
    assert model.support_filled.item() == 0


# --------------------------------------------------------------------------- the training step


def test_the_step_loss_is_eq3_with_neighbours_and_the_other_views_predictions():
    model = make_model(head_layers=2, support_size=12)  # the default heads, batch norm included
    model.update_support_set(torch.randn(12, 8, generator=torch.Generator().manual_seed(3)))
    support = model.support_set.clone()
    batch = views(8, seed=1)
    z1, z2, p1, p2 = projections_and_predictions(model, batch)
    nn1, nn2 = loop_neighbours(z1.detach(), support), loop_neighbours(z2.detach(), support)
    expected = (loop_loss(nn1, p2, 0.1) + loop_loss(nn2, p1, 0.1)) / 2
    torch.testing.assert_close(model.training_step(batch).double(), expected, rtol=1e-5, atol=1e-6)


def test_the_support_set_takes_the_first_views_projections_after_the_lookup():
    model = make_model(support_size=10)
    batch = views(4, seed=0)
    z1, z2, p1, p2 = projections_and_predictions(model, batch)
    # step 0: nothing real in the support set, so each projection is its own positive
    own = (paired_info_nce(z1.detach(), p2, 0.1) + paired_info_nce(z2.detach(), p1, 0.1)) / 2
    torch.testing.assert_close(model.training_step(batch), own)
    assert (model.support_ptr.item(), model.support_filled.item()) == (4, 4)
    torch.testing.assert_close(model.support_set[:4], F.normalize(z1.detach(), dim=1))
    assert torch.equal(model.support_set[4:], torch.zeros(6, 8))

    # step 1 looks up the support set as it was before the step: never its own projections
    batch = views(4, seed=1)
    z1, z2, p1, p2 = projections_and_predictions(model, batch)
    before = model.support_set[:4].clone()
    after = torch.cat([before, F.normalize(z1.detach(), dim=1)])

    def loss_with(support):
        return (loop_loss(loop_neighbours(z1.detach(), support), p2, 0.1)
                + loop_loss(loop_neighbours(z2.detach(), support), p1, 0.1)) / 2

    loss = model.training_step(batch).double()
    torch.testing.assert_close(loss, loss_with(before), rtol=1e-5, atol=1e-6)
    assert abs(loss - loss_with(after)) > 1e-3  # had it seen z1, z1's neighbours would be z1 itself


def test_the_support_set_is_a_fifo_queue_with_wrap_around():
    model = make_model(support_size=10)
    seen = []
    for step in range(4):  # 16 projections through a support set of 10: wraps around once
        batch = views(4, seed=step)
        seen.append(F.normalize(projections_and_predictions(model, batch)[0].detach(), dim=1))
        model.training_step(batch)
    assert (model.support_ptr.item(), model.support_filled.item()) == (16 % 10, 10)
    oldest_first = torch.roll(model.support_set, -model.support_ptr.item(), dims=0)
    torch.testing.assert_close(oldest_first, torch.cat(seen)[-10:])
    # a batch larger than the support set leaves its last rows, in order, as if written one by one
    many = torch.randn(13, 8)
    model.update_support_set(many)
    assert model.support_ptr.item() == (6 + 13) % 10
    torch.testing.assert_close(torch.roll(model.support_set, -model.support_ptr.item(), dims=0),
                               F.normalize(many[-10:], dim=1))


def test_no_gradient_reaches_the_support_set():
    model = make_model(support_size=16)
    model.training_step(views(8, seed=0))  # fill half of it
    z = torch.randn(8, 8, requires_grad=True)
    neighbours = model.nearest_neighbours(z)
    assert not neighbours.requires_grad and not model.support_set.requires_grad
    assert "support_set" in dict(model.named_buffers()) and "support_set" not in dict(model.named_parameters())
    loss = model.training_step(views(8, seed=1))
    loss.backward()
    assert model.support_set.grad is None
    for name in ("encoder", "projector", "predictor"):  # gradient flows through the predictions only
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


def test_with_each_samples_own_projection_in_the_support_set_the_positives_are_the_projections():
    model = make_model(support_size=16)
    batch = views(8, seed=2)
    z1, z2, p1, p2 = projections_and_predictions(model, batch)
    model.update_support_set(torch.cat([z1, z2]).detach())
    for z in (z1, z2):
        torch.testing.assert_close(model.nearest_neighbours(z), F.normalize(z.detach(), dim=1))
    # then NNCLR is SimCLR's InfoNCE between the projections of one view and the predictions of the other
    simclr_like = sum(F.cross_entropy(F.normalize(a.detach(), dim=1) @ F.normalize(b, dim=1).T / 0.1, torch.arange(8))
                      for a, b in ((z1, p2), (z2, p1))) / 2
    torch.testing.assert_close(model.training_step(batch), simclr_like, rtol=1e-5, atol=1e-6)


def test_the_loss_is_symmetric_under_swapping_the_views():
    model = make_model(head_layers=2, support_size=12)
    model.update_support_set(torch.randn(12, 8, generator=torch.Generator().manual_seed(4)))
    twin = copy.deepcopy(model)  # the step changes the support set: each order gets the same one
    (x1, x2), _ = views(8, seed=5)
    torch.testing.assert_close(model.training_step(([x1, x2], None)), twin.training_step(([x2, x1], None)),
                               rtol=1e-5, atol=1e-6)


def test_the_prediction_head_is_configurable():
    assert make_model().predictor.net[0].out_features == 32  # 4 * D by default
    assert make_model(prediction_hidden_dim=24).predictor.net[0].out_features == 24
    no_predictor = make_model(prediction_layers=0)
    z = torch.randn(3, 8)
    assert torch.equal(no_predictor.predictor(z), z)  # [1]'s ablation: p = z
    assert isinstance(no_predictor, Method) and no_predictor.gather_distributed is False


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    data = (torch.rand(32, 1, 16, 16), torch.zeros(32, dtype=torch.long))

    def run(epochs, checkpoint_dir=None, resume=False):
        model = make_model(head_layers=2, support_size=12)  # 8 projections a step: wraps around every 3 steps
        loader = ViewLoader(data, BatchedAugment(16, crop_scale=(0.3, 1.0)), batch_size=8)
        history = fit(model, loader, epochs=epochs, lr=1e-2, device="cpu", checkpoint_dir=checkpoint_dir,
                      resume=resume, progress=False)
        return model, history

    full, full_history = run(3)
    run(1, tmp_path)
    resumed, resumed_history = run(3, tmp_path, resume=True)
    assert resumed_history.step_loss == full_history.step_loss
    assert resumed.support_filled.item() == 12 and resumed.support_ptr.item() == (12 * 8) % 12
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_few_steps_on_random_data_train_the_whole_network():
    model = make_model(head_layers=2, support_size=16)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step(views(8, seed=step))
        assert torch.isfinite(loss) and 0 < loss.item() < 2 / 0.1 + math.log(8), (step, loss.item())  # logits in [-1/t, 1/t]
        loss.backward()
        assert all(p.grad is not None for p in model.predictor.parameters())
        optimizer.step()
        model.on_step_end()
    assert model.support_filled.item() == 16
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(support_size=0), "support_size must be an int >= 1"),
    (dict(support_size=2.5), "support_size"),
    (dict(support_size=True), "support_size"),
    (dict(prediction_layers=-1), "prediction_layers"),
    (dict(prediction_hidden_dim=0), "prediction_hidden_dim"),
    (dict(temperature=0.0), "temperature"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_model(**kwargs)


def test_bad_batches_and_inputs_are_rejected():
    model = make_model()
    (x1, x2), _ = views(4)
    with pytest.raises(ValueError, match="NNCLR expects 2 views per image, got 1"):
        model.training_step(([x1], None))
    with pytest.raises(ValueError, match="NNCLR expects 2 views per image, got 3"):
        model.training_step(([x1, x2, x1], None))
    with pytest.raises(ValueError, match="same shape"):
        model.training_step(([x1, x2[:3]], None))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        model.training_step(([x1[:1], x2[:1]], None))
    with pytest.raises(ValueError, match=r"expects projections \[B, 8\]"):
        model.nearest_neighbours(torch.randn(4, 5))
    with pytest.raises(ValueError, match="same shape"):
        paired_info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        paired_info_nce(torch.randn(4, 3), torch.randn(4, 3), temperature=-1.0)
    with pytest.raises(TypeError, match="anchors"):
        paired_info_nce([[1.0]], torch.randn(4, 3))
