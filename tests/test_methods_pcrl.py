"""PCRL (clcourse.methods.pcrl) and its U-Net (clcourse.unet): transformations, paths, gate, loss parts, resume."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clcourse.device import torch_threads
from clcourse.losses import info_nce
from clcourse.methods.pcrl import (
    PCRL,
    apply_transforms,
    make_transforms,
    pcrl_augment,
    random_transforms,
)
from clcourse.train import fit
from clcourse.unet import UNet, UNetDecoder, UNetEncoder

SIZE, WIDTHS = 32, (4, 8, 16)  # a U-Net of 3 levels: sides multiples of 4, an 8 x 8 bottleneck at 32 pixels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: on a busy machine a second thread costs more than it saves (clcourse.device.torch_threads)."""
    with torch_threads(1):
        yield


def make_pcrl(seed=0, **kw):
    """A small PCRL whose draws all come from its own generator (seeded), weights from torch's seed 0."""
    torch.manual_seed(0)
    kw.setdefault("projection_dim", 8)
    kw.setdefault("queue_size", 64)
    kw.setdefault("augment", pcrl_augment(SIZE))
    return PCRL(UNetEncoder(1, WIDTHS), generator=torch.Generator().manual_seed(seed), **kw)


def images(n=8, seed=0, size=SIZE):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def blobs(n, seed=0, size=SIZE):
    """Gaussian spots of random centre and width on a dark background, like small lesions."""
    g = torch.Generator().manual_seed(seed)
    centre = 6 + (size - 12) * torch.rand(n, 2, 1, 1, generator=g)
    sigma = 2 + 3 * torch.rand(n, 1, 1, generator=g)
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
    squared = (rows - centre[:, 0]) ** 2 + (cols - centre[:, 1]) ** 2
    return torch.exp(-squared / (2 * sigma ** 2)).unsqueeze(1)


def perturb_query_network(model, scale=0.2):
    """Move the trained network away from its momentum copy, so that the two paths differ."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(scale * torch.randn(p.shape, generator=g))


def key_params(model):
    return [p.detach().clone() for p in [*model.key_encoder.parameters(), *model.key_projector.parameters()]]


# --------------------------------------------------------------------------- transformations


def test_the_transformations_of_a_hand_made_image():
    image = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).view(1, 1, 3, 3)

    def moved(flip_rows, flip_cols, turns):
        return apply_transforms(image, make_transforms([flip_rows], [flip_cols], [turns]))[0, 0].tolist()

    assert make_transforms([1], [0], [3]).tolist() == [[1, 0, 0, 0, 0, 1]]
    assert moved(0, 0, 0) == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert moved(1, 0, 0) == [[7, 8, 9], [4, 5, 6], [1, 2, 3]]  # upside down
    assert moved(0, 1, 0) == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]  # left to right
    assert moved(0, 0, 1) == [[3, 6, 9], [2, 5, 8], [1, 4, 7]]  # a quarter turn counter-clockwise
    assert moved(0, 0, 2) == [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    assert moved(1, 0, 1) == [[9, 6, 3], [8, 5, 2], [7, 4, 1]]  # flips first, then the turn


def test_the_transformations_match_the_authors_numpy_ops_per_sample():
    x = torch.rand(16, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    flags = torch.cartesian_prod(torch.arange(2), torch.arange(2), torch.arange(4))  # all 16 combinations
    out = apply_transforms(x, make_transforms(flags[:, 0], flags[:, 1], flags[:, 2]))
    for i, (flip_rows, flip_cols, turns) in enumerate(flags.tolist()):
        a = x[i].numpy()  # [C, H, W], axes as in the authors' dataset code
        a = np.flip(a, axis=1) if flip_rows else a
        a = np.flip(a, axis=2) if flip_cols else a
        assert np.array_equal(out[i].numpy(), np.rot90(a, k=turns, axes=(1, 2)))
    masks = torch.randint(0, 3, (16, 1, 5, 5))  # integer masks move the same way
    assert torch.equal(apply_transforms(masks, make_transforms(flags[:, 0], flags[:, 1], flags[:, 2])).float(),
                       apply_transforms(masks.float(), make_transforms(flags[:, 0], flags[:, 1], flags[:, 2])))


def test_random_transformations_are_reproducible_and_cover_every_combination():
    t = random_transforms(800, torch.Generator().manual_seed(3))
    assert torch.equal(t, random_transforms(800, torch.Generator().manual_seed(3)))
    assert t.shape == (800, 6) and torch.equal(t[:, 2:].sum(1), torch.ones(800))
    combos = torch.unique(t, dim=0)
    assert len(combos) == 16
    assert t[:, :2].mean(0).sub(0.5).abs().max() < 0.06 and t[:, 2:].mean(0).sub(0.25).abs().max() < 0.05


def test_the_targets_are_the_views_under_their_own_transformations():
    model = make_pcrl()
    step = model.step(images())
    for view, t, target in zip(step.views, step.transforms, step.targets):
        assert torch.equal(target, apply_transforms(view, t))
        for i in range(len(view)):  # and sample by sample, with torch's own ops
            flip_rows, flip_cols, turns = bool(t[i, 0]), bool(t[i, 1]), int(t[i, 2:].argmax())
            expected = view[i].flip(-2) if flip_rows else view[i]
            expected = expected.flip(-1) if flip_cols else expected
            assert torch.equal(target[i], expected.rot90(turns, (-2, -1)))
    assert not torch.equal(step.transforms[0], step.transforms[1])  # each view draws its own


# --------------------------------------------------------------------------- the three paths


def test_the_hybrid_path_mixes_the_ordinary_and_momentum_features_with_alpha_at_least_half():
    model = make_pcrl(seed=4, momentum=1.0)  # frozen momentum encoder: the copy of the untrained network
    perturb_query_network(model)
    model.eval()  # batch norm with running statistics, so the paths can be recomputed one by one
    x = images()
    step = model.step(x)

    # The documented draws, replayed from a generator of the same seed.
    g = torch.Generator().manual_seed(4)
    torch.randn(64, 8, generator=g)  # MoCo's initial queue
    views = [model.augment(x, generator=g) for _ in range(2)]
    transforms = [random_transforms(8, g) for _ in range(2)]
    u = float(torch.rand((), generator=g))
    assert step.alpha == max(u, 1 - u) >= 0.5
    assert all(torch.equal(a, b) for a, b in zip(step.views, views))
    assert all(torch.equal(a, b) for a, b in zip(step.transforms, transforms))

    with torch.no_grad():
        ordinary = model.gate(model.encoder.features(views[0]), transforms[0])
        momentum = model.gate(model.key_encoder.features(views[1]), transforms[1])
    for level, (o, m, h) in enumerate(zip(step.ordinary, step.momentum, step.hybrid)):
        torch.testing.assert_close(o, ordinary[level])
        torch.testing.assert_close(m, momentum[level])
        assert torch.equal(h, step.alpha * o + (1 - step.alpha) * m)
        assert not torch.allclose(o, m, atol=1e-3)  # two different encoders
    assert step.ordinary[-1].requires_grad and not step.momentum[0].requires_grad  # no gradient into the momentum side
    torch.testing.assert_close(step.outputs[0], model.decode(step.ordinary))
    torch.testing.assert_close(step.outputs[1], model.decode(step.hybrid))


def test_alpha_is_folded_into_the_upper_half():
    alphas = torch.tensor([make_pcrl(seed=s, contrastive=False, hybrid=False).step(images(4)).alpha
                           for s in range(40)])
    assert alphas.min() >= 0.5 and alphas.max() <= 1.0
    assert 0.65 < alphas.mean() < 0.85  # the fold of Beta(1, 1) = U(0, 1) is U(0.5, 1), mean 0.75


# --------------------------------------------------------------------------- the transformation-conditioned gate


def test_the_attention_weights_depend_on_the_transformation():
    model = make_pcrl()
    t = make_transforms([0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 2, 3])
    weights = model.attention_weights(t)
    assert weights.shape == (4, WIDTHS[-1]) and bool(((weights > 0) & (weights < 1)).all())
    assert all(not torch.allclose(weights[i], weights[j], atol=1e-4) for i in range(4) for j in range(i))
    torch.testing.assert_close(model.attention_weights(t[:1]), weights[:1])  # per sample


def test_a_zero_weight_gate_zeroes_its_channels_and_the_decoder_cannot_see_them():
    model = make_pcrl()
    model.eval()
    closed = [0, 5, 9]
    with torch.no_grad():
        last = model.attention[2]
        last.weight[closed] = 0.0
        last.bias[closed] = -1e4  # sigmoid(-1e4) is exactly 0 in float32
    t = random_transforms(8, torch.Generator().manual_seed(0))
    features = model.encoder.features(images())
    gated = model.gate(features, t)
    assert bool((gated[-1][:, closed] == 0).all()) and bool((gated[-1][:, 1] != 0).any())
    assert all(torch.equal(a, b) for a, b in zip(gated[:-1], features[:-1]))  # the skips pass ungated
    scrambled = [*features[:-1], features[-1].clone()]
    scrambled[-1][:, closed] = torch.randn_like(scrambled[-1][:, closed])
    with torch.no_grad():
        assert torch.equal(model.decode(model.gate(scrambled, t)), model.decode(gated))


def test_different_transformations_give_different_reconstructions():
    model = make_pcrl()
    x = images(4)
    upright = model.reconstruct(x, make_transforms([0] * 4, [0] * 4, [0] * 4))
    turned = model.reconstruct(x, make_transforms([0] * 4, [0] * 4, [1] * 4))
    # The same input twice gives the same bits; the gate alone tells the two apart (weakly, untrained).
    assert torch.equal(upright, model.reconstruct(x, make_transforms([0] * 4, [0] * 4, [0] * 4)))
    assert upright.shape == (4, 1, SIZE, SIZE) and (upright - turned).abs().amax(dim=(1, 2, 3)).min() > 1e-6
    assert model.training  # reconstruct evaluates, then gives the mode back


def test_the_gate_learns_from_the_reconstruction_loss():
    model = make_pcrl()
    model.step(images()).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.attention.parameters())
    assert all(p.grad is None for p in model.key_encoder.parameters())


# --------------------------------------------------------------------------- momentum encoder and queue (MoCo's)


def test_the_momentum_encoder_follows_moco_s_rule_and_gets_no_gradient():
    model = make_pcrl(momentum=0.9)
    perturb_query_network(model)
    q0 = [p.detach().clone() for p in [*model.encoder.parameters(), *model.projector.parameters()]]
    k0 = key_params(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.training_step((images(), None)).backward()
    opt.step()
    for k, k_before, q_before in zip(key_params(model), k0, q0):
        torch.testing.assert_close(k, 0.9 * k_before + 0.1 * q_before, atol=1e-6, rtol=0)


def test_the_loss_contrasts_against_the_queue_before_the_batch_then_enqueues_the_keys():
    model = make_pcrl(momentum=1.0)
    model.eval()
    before = model.queue.clone()
    step = model.step(images())
    x1, x2 = step.views
    with torch.no_grad():
        q = F.normalize(model.projector(model.encoder(x1)), dim=1)
        k = F.normalize(model.key_projector(model.key_encoder(x2)), dim=1)
        torch.testing.assert_close(step.contrastive, info_nce(q, k, before, 0.2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue[:8], k, atol=1e-6, rtol=0)
    assert torch.equal(model.queue[8:], before[8:]) and model.queue_ptr.item() == 8


def test_reconstruction_only_enqueues_nothing_and_a_queue_smaller_than_the_batch_is_an_error():
    model = make_pcrl(contrastive=False)
    model.step(images())
    assert model.queue_ptr.item() == 0
    with pytest.raises(ValueError, match="queue_size"):
        make_pcrl(queue_size=6).step(images(8))


# --------------------------------------------------------------------------- the loss and its parts


def test_the_ablations_equal_the_terms_of_the_full_loss_on_the_same_draws():
    x = images()
    full = make_pcrl(seed=2).step(x)
    contrastive_only = make_pcrl(seed=2, reconstruction=False).step(x)
    reconstruction_only = make_pcrl(seed=2, contrastive=False).step(x)
    no_hybrid = make_pcrl(seed=2, hybrid=False).step(x)

    torch.testing.assert_close(full.loss, full.contrastive + full.reconstruction)
    torch.testing.assert_close(contrastive_only.loss, full.contrastive)
    torch.testing.assert_close(reconstruction_only.loss, full.reconstruction)
    assert contrastive_only.reconstruction is None and contrastive_only.outputs is None
    assert reconstruction_only.contrastive is None

    (t1, t2), alpha = full.targets, full.alpha
    ordinary_mse = F.mse_loss(full.outputs[0], t1)
    hybrid_mse = F.mse_loss(full.outputs[1], alpha * t1 + (1 - alpha) * t2)
    torch.testing.assert_close(full.reconstruction, (ordinary_mse + hybrid_mse) / 2)  # the mean, as the code
    torch.testing.assert_close(no_hybrid.reconstruction, ordinary_mse)
    torch.testing.assert_close(no_hybrid.loss, full.contrastive + ordinary_mse)
    assert no_hybrid.hybrid is None and no_hybrid.outputs[1] is None


def test_shapes():
    model = make_pcrl()
    step = model.step(images(6))
    assert step.loss.shape == () and all(v.shape == (6, 1, SIZE, SIZE) for v in (*step.views, *step.targets))
    assert [tuple(m.shape) for m in step.hybrid] == [(6, 4, 32, 32), (6, 8, 16, 16), (6, 16, 8, 8)]
    assert all(o.shape == (6, 1, SIZE, SIZE) for o in step.outputs)
    assert model(images(3)).shape == (3, WIDTHS[-1])  # the pooled bottleneck, for probes
    seg = model.segmentation_model(num_classes=3)
    assert seg(images(2)).shape == (2, 3, SIZE, SIZE)
    assert seg.predict(images(5)).shape == (5, SIZE, SIZE) and seg.predict(images(5)).dtype == torch.long
    default = PCRL(queue_size=64)  # the lesson's default: 64-pixel views, widths 8-16-32-64
    assert default.step(images(4, size=48)).outputs[0].shape == (4, 1, 64, 64)


def test_the_segmentation_model_starts_from_copies_of_the_pre_trained_halves():
    model = make_pcrl()
    seg = model.segmentation_model()
    for mine, theirs in ((seg.encoder, model.encoder), (seg.decoder, model.decoder)):
        assert mine is not theirs
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    with torch.no_grad():
        next(seg.encoder.parameters()).add_(1.0)
    assert not torch.equal(next(seg.encoder.parameters()), next(model.encoder.parameters()))


def test_the_u_net_segments_with_the_cross_entropy_of_the_labelled_pixels():
    torch.manual_seed(0)
    net = UNet(out_channels=2, widths=WIDTHS)
    x, masks = images(4), torch.randint(0, 2, (4, SIZE, SIZE))
    masks[:, :5] = 255  # unlabelled pixels (IGNORE_INDEX) do not count
    logits = net(x)
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(net.training_step((x, masks)), expected)
    history = fit(net, [(x, masks)], steps=2, device="cpu", progress=False, amp=False)
    assert len(history.step_loss) == 2
    weighted = UNet(out_channels=2, widths=WIDTHS, encoder=net.encoder, decoder=net.decoder, class_weights=(1, 10))
    weighted.head = net.head
    logits = weighted(x).permute(0, 2, 3, 1)[keep]
    expected = F.cross_entropy(logits, masks[keep], weight=torch.tensor([1.0, 10.0]))
    torch.testing.assert_close(weighted.training_step((x, masks)), expected)


# --------------------------------------------------------------------------- training


def run(checkpoint_dir, epochs, resume=False):
    torch.manual_seed(0)
    model = PCRL(UNetEncoder(1, WIDTHS), projection_dim=8, queue_size=64, augment=pcrl_augment(SIZE))
    loader = [(images(8, seed=s), None) for s in range(3)]
    history = fit(model, loader, epochs=epochs, device="cpu", progress=False, amp=False,
                  checkpoint_dir=checkpoint_dir, resume=resume)
    return model, history


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    straight, history = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed, resumed_history = run(tmp_path / "resumed", 4, resume=True)
    assert history.step_loss == resumed_history.step_loss and len(history.step_loss) == 12
    state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert state.keys() == resumed_state.keys() and all(torch.equal(state[k], resumed_state[k]) for k in state)
    assert straight.queue_ptr.item() == 12 * 8 % 64


def test_a_few_dozen_steps_on_blobs_reduce_the_reconstruction_error():
    model = make_pcrl(queue_size=128)
    x = blobs(16)
    probe, t = blobs(16, seed=1), random_transforms(16, torch.Generator().manual_seed(1))

    def error():
        return F.mse_loss(model.reconstruct(probe, t), apply_transforms(probe, t)).item()

    before = error()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model.training_step((x, None))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step_end()
    assert error() < 0.6 * before  # 0.068 -> 0.031 when written


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    model = make_pcrl()
    with pytest.raises(ValueError, match="C = 1 channels"):
        model.step(images(4).repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="multiples of 4"):
        UNetEncoder(1, WIDTHS).features(images(2, size=18))
    with pytest.raises(ValueError, match="multiples of 4"):
        make_pcrl(augment=pcrl_augment(18)).step(images())
    with pytest.raises(ValueError, match="square"):
        apply_transforms(torch.rand(2, 1, 8, 16), random_transforms(2))
    with pytest.raises(ValueError, match="temperature"):
        make_pcrl(temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        make_pcrl(temperature=-0.2)
    with pytest.raises(ValueError, match="at least one of its terms"):
        make_pcrl(contrastive=False, reconstruction=False)
    with pytest.raises(TypeError, match="UNetEncoder"):
        PCRL(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="same widths"):
        PCRL(UNetEncoder(1, WIDTHS), UNetDecoder((4, 8)))
    with pytest.raises(ValueError, match="makes its own two views"):
        model.training_step(([images(), images()], None))
    with pytest.raises(ValueError, match=r"transforms must be a tensor \[8, 6\]"):
        model.gate(model.encoder.features(images()), random_transforms(4))
    with pytest.raises(ValueError, match="one-hot"):
        model.reconstruct(images(1), torch.tensor([[0.0, 0, 1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="quarter_turns"):
        make_transforms([0], [0], [4])
    with pytest.raises(ValueError, match="widths"):
        UNetEncoder(1, (8,))
    with pytest.raises(ValueError, match="masks must be int64"):
        UNet(widths=WIDTHS).training_step((images(2), torch.zeros(2, SIZE, SIZE)))
    with pytest.raises(ValueError, match="class_weights"):
        UNet(widths=WIDTHS, class_weights=(1.0, 0.0))
    with pytest.raises(ValueError, match="class_weights"):
        make_pcrl().segmentation_model(num_classes=3, class_weights=(1.0, 10.0))
    with pytest.raises(ValueError, match="out_channels >= 2"):
        UNet(out_channels=1, widths=WIDTHS).training_step((images(2), torch.zeros(2, SIZE, SIZE, dtype=torch.long)))
