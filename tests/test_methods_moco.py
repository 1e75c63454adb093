import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcourse.encoders import SmallCNN
from clcourse.losses import info_nce
from clcourse.methods.moco import MoCo
from clcourse.train import fit


class LinearEncoder(nn.Module):
    """A batch-norm-free encoder whose outputs differ clearly between images (an untrained
    CNN maps random images to nearly parallel vectors), for tests where BN is not the point."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_model(encoder=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("queue_size", 32)
    kw.setdefault("shuffle_bn_groups", 2)
    return MoCo(encoder or LinearEncoder(), projection_dim=8, **kw)


def cnn():
    torch.manual_seed(0)
    return SmallCNN(1, width=8, out_dim=16)


def images(n, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def batch(n=8, seed=0):
    return [images(n, seed), images(n, seed + 100)], None


def plain_keys(model, x):
    """Keys from one forward pass of the key network, without shuffle-BN."""
    return F.normalize(model.key_projector(model.key_encoder(x)), dim=1)


def perturb_query_network(model, scale=0.1):
    """Move the query network away from its copy, so that the momentum rule is visible."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projector.parameters()):
            p.add_(scale * torch.randn(p.shape, generator=g))


def key_params(model):
    return [p.detach().clone() for p in list(model.key_encoder.parameters()) + list(model.key_projector.parameters())]


def query_params(model):
    return [p.detach().clone() for p in list(model.encoder.parameters()) + list(model.projector.parameters())]


def test_loss_is_cross_entropy_over_positive_then_queue():
    model = make_model(momentum=1.0, temperature=0.2)
    model.eval()  # fixed BN statistics, so the hand computation sees the same network
    (x_q, x_k), _ = batch()
    q = F.normalize(model.projector(model.encoder(x_q)), dim=1)
    k = plain_keys(model, x_k)
    queue = model.queue.clone()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    loss = model.training_step(([x_q, x_k], None))
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(loss, info_nce(q, k, queue, 0.2), atol=1e-5)


def test_queue_starts_with_random_unit_vectors():
    model = make_model()
    assert model.queue.shape == (32, 8)
    assert torch.allclose(model.queue.norm(dim=1), torch.ones(32))
    assert model.queue_ptr.item() == 0


def test_queue_is_fifo_and_holds_exactly_the_last_k_keys_with_wrap_around():
    model = make_model(queue_size=10, momentum=1.0)  # frozen key encoder: keys computable beforehand
    model.eval()
    initial = model.queue.clone()
    seen = []
    for step in range(4):  # 16 keys through a queue of 10: wraps around once
        views, _ = batch(4, seed=step)
        seen.append(plain_keys(model, views[1]))
        model.training_step((views, None))
        if step == 0:
            assert torch.allclose(model.queue[:4], seen[0], atol=1e-6)
            assert torch.equal(model.queue[4:], initial[4:])
    assert model.queue_ptr.item() == 16 % 10
    oldest_first = torch.roll(model.queue, -model.queue_ptr.item(), dims=0)
    assert torch.allclose(oldest_first, torch.cat(seen)[-10:], atol=1e-6)


def test_loss_uses_the_queue_before_this_batch_is_enqueued():
    model = make_model(queue_size=8, momentum=1.0)  # one batch of 8 replaces the whole queue
    model.eval()
    views, _ = batch()
    before = model.queue.clone()
    q = F.normalize(model.projector(model.encoder(views[0])), dim=1)
    expected = info_nce(q, plain_keys(model, views[1]), before, model.temperature)
    assert torch.allclose(model.training_step((views, None)), expected, atol=1e-5)


def test_queue_smaller_than_a_step_of_keys_is_an_error():
    model = make_model(queue_size=6)
    with pytest.raises(ValueError, match="queue_size"):
        model.training_step(batch(8))
    model = make_model(queue_size=12, symmetric=True)  # symmetric enqueues 2B = 16 keys
    with pytest.raises(ValueError, match="queue_size"):
        model.training_step(batch(8))


def test_key_encoder_gets_no_gradient_and_moves_by_the_momentum_rule():
    model = make_model(cnn(), momentum=0.9)
    perturb_query_network(model)
    q0, k0 = query_params(model), key_params(model)
    fc_before = model.encoder.fc.weight.detach().clone()
    # The default optimiser of clcourse.train.fit: every parameter, with weight decay.
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    loss = model.training_step(batch())
    opt.zero_grad()
    loss.backward()
    keys = list(model.key_encoder.parameters()) + list(model.key_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in keys)
    assert model.encoder.fc.weight.grad.abs().sum() > 0
    assert model.projector.net[-1].weight.grad.abs().sum() > 0
    opt.step()
    for k, k_before, q_before in zip(keys, k0, q0):
        assert torch.allclose(k, 0.9 * k_before + 0.1 * q_before, atol=1e-6)
    assert not torch.equal(model.encoder.fc.weight, fc_before)  # the optimiser did move the query encoder


def test_momentum_one_keeps_the_key_encoder_fixed():
    model = make_model(momentum=1.0)
    perturb_query_network(model)
    k0 = key_params(model)
    model.training_step(batch())
    assert all(torch.equal(a, b) for a, b in zip(key_params(model), k0))


def test_momentum_zero_copies_the_query_encoder():
    model = make_model(momentum=0.0)
    perturb_query_network(model)
    q0 = query_params(model)
    model.training_step(batch())
    assert all(torch.equal(a, b) for a, b in zip(key_params(model), q0))


def test_momentum_update_averages_batch_norm_buffers_too():
    model = make_model(cnn(), momentum=0.5)
    bn_q, bn_k = model.encoder.features[0][1], model.key_encoder.features[0][1]
    with torch.no_grad():
        bn_q.running_mean.fill_(2.0)
        bn_k.running_mean.fill_(1.0)
        bn_q.num_batches_tracked.fill_(7)
    model.momentum_update()
    assert torch.allclose(bn_k.running_mean, torch.full_like(bn_k.running_mean, 1.5))
    assert bn_k.num_batches_tracked.item() == 7
    model.momentum = 0.0
    model.momentum_update()
    for query_net, key_net in ((model.encoder, model.key_encoder), (model.projector, model.key_projector)):
        key_state = key_net.state_dict()
        assert all(torch.equal(v, key_state[name]) for name, v in query_net.state_dict().items())


def test_shuffle_bn_is_a_permutation_identity_in_eval_mode():
    model = make_model(cnn(), shuffle_bn_groups=4)
    model.eval()
    x = images(12)
    assert torch.allclose(model.keys(x), plain_keys(model, x), atol=1e-6)
    assert torch.allclose(model.queries(x), F.normalize(model.projector(model.encoder(x)), dim=1), atol=1e-6)


def test_shuffle_bn_normalises_each_group_with_its_own_statistics_in_train_mode():
    groups, n = 3, 12
    model = make_model(cnn(), shuffle_bn_groups=groups)
    model.train()
    model.generator = torch.Generator().manual_seed(5)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))  # the permutation keys() will draw
    x = images(n)
    expected = torch.empty(n, 8)
    with torch.no_grad():
        for part in perm.tensor_split(groups):  # shuffled groups for the keys
            expected[part] = plain_keys(model, x[part])
    keys = model.keys(x)
    assert torch.allclose(keys, expected, atol=1e-5)
    assert not torch.allclose(keys, plain_keys(model, x), atol=1e-3)  # whole-batch BN gives other keys
    queries = model.queries(x)
    for part in torch.arange(n).tensor_split(groups):  # contiguous groups for the queries
        assert torch.allclose(queries[part], F.normalize(model.projector(model.encoder(x[part])), dim=1), atol=1e-5)


def test_without_the_shuffle_each_key_is_normalised_in_its_querys_group():
    groups, n = 3, 12
    model = make_model(cnn(), shuffle_bn_groups=groups, shuffle_keys=False)
    model.train()
    x = images(n)
    with torch.no_grad():
        expected = torch.cat([plain_keys(model, x[part]) for part in torch.arange(n).tensor_split(groups)])
    assert torch.allclose(model.keys(x), expected, atol=1e-5)
    shuffled = make_model(cnn(), shuffle_bn_groups=groups)
    shuffled.train()
    assert not torch.allclose(shuffled.keys(x), expected, atol=1e-3)


def test_grouped_pass_updates_running_statistics_as_separate_passes_and_restores_the_layers():
    groups, n = 3, 11  # unequal groups (4, 4, 3), as tensor_split makes them
    model = make_model(cnn(), shuffle_bn_groups=groups, shuffle_keys=False)
    separate = copy.deepcopy(model)
    model.train(), separate.train()
    x = images(n)
    queries = model.queries(x)
    expected = torch.cat([separate.projector(separate.encoder(part)) for part in x.tensor_split(groups)])
    assert torch.allclose(queries, F.normalize(expected, dim=1), atol=1e-5)
    for name, value in separate.encoder.state_dict().items():  # running means, variances, batch counts
        assert torch.allclose(model.encoder.state_dict()[name].float(), value.float(), atol=1e-6), name
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and all("forward" not in vars(layer) for layer in layers)


def test_layers_are_restored_when_the_pass_fails():
    model = make_model(cnn(), shuffle_bn_groups=2)
    model.train()
    with pytest.raises(ValueError, match="channels"):
        model.queries(torch.rand(8, 3, 16, 16))  # the encoder refuses 3 channels inside the grouped pass
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_one_group_is_plain_batch_norm():
    model = make_model(cnn(), shuffle_bn_groups=1)
    model.train()
    x = images(8)
    assert torch.allclose(model.keys(x), plain_keys(model, x), atol=1e-6)


def test_batch_too_small_for_the_groups_is_an_error():
    model = make_model(cnn(), shuffle_bn_groups=4)
    with pytest.raises(ValueError, match="shuffle_bn_groups"):
        model.training_step(batch(6))


def test_queue_is_in_the_checkpoint(tmp_path):
    model = make_model(queue_size=12)
    for step in range(2):
        model.training_step(batch(8, seed=step))
    assert {"queue", "queue_ptr"} <= set(model.state_dict())
    torch.save(model.state_dict(), tmp_path / "moco.pt")
    restored = make_model(queue_size=12)
    restored.load_state_dict(torch.load(tmp_path / "moco.pt", weights_only=True))
    assert torch.equal(restored.queue, model.queue)
    assert restored.queue_ptr.item() == model.queue_ptr.item() == 16 % 12
    model.eval()
    restored.eval()
    assert torch.allclose(model.training_step(batch(8, seed=9)), restored.training_step(batch(8, seed=9)))


def test_symmetric_loss_averages_both_directions_and_enqueues_both_keys():
    model = make_model(momentum=1.0, symmetric=True)
    model.eval()
    (x1, x2), _ = batch()
    queue = model.queue.clone()
    q1 = F.normalize(model.projector(model.encoder(x1)), dim=1)
    q2 = F.normalize(model.projector(model.encoder(x2)), dim=1)
    k1, k2 = plain_keys(model, x1), plain_keys(model, x2)
    expected = (info_nce(q1, k2, queue, model.temperature) + info_nce(q2, k1, queue, model.temperature)) / 2
    assert torch.allclose(model.training_step(([x1, x2], None)), expected, atol=1e-5)
    assert model.queue_ptr.item() == 16
    assert torch.allclose(model.queue[:16], torch.cat([k2, k1]), atol=1e-6)


def test_trains_with_the_course_loop():
    model = make_model(cnn())
    k0 = key_params(model)
    history = fit(model, [batch(8, seed=s) for s in range(2)], steps=2, device="cpu", progress=False, lr=1e-2)
    assert history.steps == 2 and all(torch.isfinite(torch.tensor(history.step_loss)))
    assert model.queue_ptr.item() == 16
    assert not all(torch.equal(a, b) for a, b in zip(key_params(model), k0))  # moved by momentum


def test_forward_gives_query_encoder_features():
    model = make_model()
    assert model(images(3)).shape == (3, 16)
    assert model.encoder is not model.key_encoder


def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        make_model(temperature=0)
    with pytest.raises(ValueError, match="momentum"):
        make_model(momentum=1.5)
    with pytest.raises(ValueError, match="queue_size"):
        make_model(queue_size=0)
    with pytest.raises(ValueError, match="shuffle_bn_groups"):
        make_model(shuffle_bn_groups=0)
    model = make_model()
    with pytest.raises(ValueError, match="2 views"):
        model.training_step(([images(8)], None))
    with pytest.raises(ValueError, match="same shape"):
        model.training_step(([images(8), images(6)], None))
