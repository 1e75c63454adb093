"""SwAV (clcourse.methods.swav) and its loss: prototypes, codes of the large crops, freeze, queue, resume."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcourse.augment import BatchedAugment
from clcourse.clustering import sinkhorn
from clcourse.data import ViewLoader
from clcourse.losses import swapped_prediction
from clcourse.methods import SwAV
from clcourse.train import fit


class LinearEncoder(nn.Module):
    """Batch-norm-free and size-agnostic (pooled to 4x4), so small crops go through it and tests are exact."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


def make_model(**kw):
    torch.manual_seed(0)
    kw.setdefault("num_prototypes", 6)
    return SwAV(LinearEncoder(), projection_dim=8, head_layers=1, **kw)


def crops(b=8, large=2, small=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.rand(b, 1, 16, 16, generator=g) for _ in range(large)]
            + [torch.rand(b, 1, 8, 8, generator=g) for _ in range(small)]), None


def _manual_loss(model, views, t=0.1):
    """[1]'s loop in float64: codes of each large crop by Sinkhorn, every other crop predicts them."""
    z = [F.normalize(model.project(v), dim=1).double() for v in views]
    c = model.prototypes.weight.double()
    scores = [v @ c.T for v in z]
    total = 0.0
    for i in range(model.n_large_crops):
        q = sinkhorn(scores[i].detach(), model.epsilon, model.sinkhorn_iterations)
        sub = sum(-(q * F.log_softmax(scores[v] / t, dim=1)).sum(dim=1).mean() for v in range(len(views)) if v != i)
        total += sub / (len(views) - 1)
    return total / model.n_large_crops


def test_swapped_prediction_closed_forms():
    b, k = 5, 7
    uniform = [torch.zeros(b, k), torch.zeros(b, k), torch.zeros(b, k)]
    codes = [torch.softmax(torch.randn(b, k), dim=1)]
    # equal scores: every prediction is uniform, the cross-entropy of any code is log K
    torch.testing.assert_close(swapped_prediction(uniform, codes), torch.tensor(math.log(k)))
    # a crop whose scores peak (t -> 0) at the coded prototype predicts a one-hot code perfectly
    one_hot = F.one_hot(torch.arange(b) % k, k).float()
    sharp = [one_hot * 10.0, one_hot * 10.0]
    assert swapped_prediction(sharp, [one_hot], temperature=0.01) < 1e-6


def test_the_loss_is_the_papers_loop_over_large_crops_and_all_others():
    model = make_model()
    views, _ = crops()
    torch.testing.assert_close(model.training_step((views, None)).double(), _manual_loss(model, views),
                               rtol=1e-5, atol=1e-6)


def test_only_the_large_crops_are_coded():
    model = make_model()
    views, _ = crops()
    z = model.embed(views)
    before = [model.codes(z[i].detach(), i, model.prototypes.weight.detach()) for i in range(2)]
    changed = views[:2] + [torch.rand_like(v) for v in views[2:]]
    z2 = model.embed(changed)
    after = [model.codes(z2[i].detach(), i, model.prototypes.weight.detach()) for i in range(2)]
    for a, b in zip(before, after):
        assert torch.equal(a, b)  # small crops predict, they never set the targets
    torch.testing.assert_close(before[0].sum(dim=1), torch.ones(8))


def test_without_equipartition_the_codes_are_a_plain_softmax():
    model = make_model(equipartition=False)
    views, _ = crops()
    z = model.embed(views)[0].detach()
    c = model.prototypes.weight.detach()
    torch.testing.assert_close(model.codes(z, 0, c), torch.softmax(z @ c.T / model.epsilon, dim=1))
    assert not torch.allclose(make_model().codes(z, 0, c), model.codes(z, 0, c))


def test_prototypes_stay_unit_vectors_and_learn_after_the_freeze():
    model = make_model(freeze_prototypes_steps=2)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        model.training_step(crops(seed=step)).backward()
        frozen = model.prototypes.weight.grad is None
        assert frozen == (step < 2), step
        assert model.encoder.fc.weight.grad is not None  # the encoder learns from the first step
        optimizer.step()
        model.on_step_end()
        torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))
    assert model.steps.item() == 3


def test_the_queue_joins_the_sinkhorn_input_once_full():
    model = make_model(queue_length=16)
    first, second, third = (crops(seed=s)[0] for s in range(3))
    model.training_step((first, None))
    assert model.queue_size.item() == 8
    z_second = [z.detach() for z in model.embed(second)]
    model.training_step((second, None))
    assert model.queue_size.item() == 16
    for crop in range(2):  # newest first
        torch.testing.assert_close(model.queue[crop, :8], z_second[crop])
    queue = model.queue.clone()
    z = [zz.detach() for zz in model.embed(third)]
    c = model.prototypes.weight.detach()
    with_queue = sinkhorn(torch.cat([queue[0] @ c.T, z[0] @ c.T]))[-8:]
    assert torch.allclose(model.codes(z[0], 0, c), with_queue)
    assert not torch.allclose(with_queue, sinkhorn(z[0] @ c.T))


def test_multi_crop_views_come_from_the_batched_loader():
    images = torch.rand(32, 1, 16, 16)
    loader = ViewLoader((images, torch.zeros(32, dtype=torch.long)), BatchedAugment(16, crop_scale=(0.3, 1.0)),
                        batch_size=8, small_augment=BatchedAugment(8, crop_scale=(0.05, 0.3)), n_small_views=3)
    views, _ = next(iter(loader))
    assert [list(v.shape) for v in views] == [[8, 1, 16, 16]] * 2 + [[8, 1, 8, 8]] * 3
    with pytest.raises(ValueError, match="small_augment"):
        ViewLoader((images, torch.zeros(32, dtype=torch.long)), None, batch_size=8, n_small_views=2)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    data = (torch.rand(32, 1, 16, 16), torch.zeros(32, dtype=torch.long))

    def run(epochs, checkpoint_dir=None, resume=False):
        model = make_model(queue_length=16, freeze_prototypes_steps=3)
        loader = ViewLoader(data, BatchedAugment(16, crop_scale=(0.3, 1.0)), batch_size=8,
                            small_augment=BatchedAugment(8), n_small_views=2)
        history = fit(model, loader, epochs=epochs, lr=1e-2, device="cpu", checkpoint_dir=checkpoint_dir,
                      resume=resume, progress=False)
        return model, history

    full, full_history = run(3)
    run(1, tmp_path)
    resumed, resumed_history = run(3, tmp_path, resume=True)
    assert resumed_history.step_loss == full_history.step_loss
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_prototypes=1), "num_prototypes"),
    (dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    (dict(n_large_crops=0), "n_large_crops"),
    (dict(queue_length=-1), "queue_length"),
    (dict(temperature=0.0), "temperature"),
    (dict(epsilon=-1.0), "epsilon"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_model(**kwargs)


def test_bad_batches_are_rejected():
    model = make_model(n_large_crops=3)
    with pytest.raises(ValueError, match="n_large_crops"):
        model.training_step(crops(large=2, small=0))
    with pytest.raises(ValueError, match="large crops"):
        model.training_step(crops(large=2, small=1))  # the third "large" crop is small
    with pytest.raises(ValueError, match="at least 2"):
        make_model().training_step(crops(large=1, small=0))
    views, _ = crops()
    with pytest.raises(ValueError, match="batch size"):
        make_model().training_step((views[:3] + [views[3][:4]], None))
