"""PCL (clcourse.methods.PCL): the E-step's k-means and concentrations, ProtoNCE, warm-up, indices, resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clcourse import clustering
from clcourse.clustering import concentration, kmeans
from clcourse.data import ImageData, ViewLoader
from clcourse.encoders import SmallCNN
from clcourse.losses import proto_nce
from clcourse.methods import PCL, MoCo
from clcourse.train import fit
from test_distributed_methods import LinearEncoder  # [B, 1, 8, 8] -> [B, 16], no batch norm


def make_pcl(encoder=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("projection_dim", 8)
    kw.setdefault("queue_size", 64)
    kw.setdefault("shuffle_bn_groups", 2)
    kw.setdefault("num_clusters", (3, 6))
    kw.setdefault("warmup_epochs", 1)
    return PCL(encoder or LinearEncoder(), **kw)


def images(n, seed=0, size=8):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def jitter(x, generator=None):
    """A batched 'augmentation' for ViewLoader: a little noise, drawn from the loader's generator."""
    return x + 0.05 * torch.randn(x.shape, generator=generator)


# --------------------------------------------------------------------------- the concentration (E-step)


def _points_at(distances: dict, centroids: torch.Tensor):
    """Members of each cluster at the given distances from its centroid, in alternating directions."""
    points, assignments = [], []
    for k, ds in distances.items():
        for i, d in enumerate(ds):
            direction = torch.tensor([1.0, 0.0] if i % 2 == 0 else [0.0, -1.0], dtype=torch.float64)
            points.append(centroids[k] + d * direction)
            assignments.append(k)
    return torch.stack(points), torch.tensor(assignments)


def test_concentration_by_hand_with_a_singleton_an_empty_cluster_the_clamp_and_the_rescale():
    centroids = torch.tensor([[k, 2.0 * k] for k in range(6)], dtype=torch.float64)
    members = {0: [1.0, 2.0, 3.0], 1: [4.0, 4.0], 2: [5.0], 3: [1.0, 1.0, 1.0, 1.0], 5: [0.5, 1.5]}  # 4: empty
    features, assignments = _points_at(members, centroids)
    # eq. 12: phi = sum of the distances / (Z log(Z + alpha)), alpha = 10
    raw = {0: 6 / (3 * math.log(13)), 1: 8 / (2 * math.log(12)), 3: 4 / (4 * math.log(14)), 5: 2 / (2 * math.log(12))}
    largest = raw[1]
    phi = [raw[0], raw[1], largest, raw[3], largest, raw[5]]  # the singleton 2 and the empty 4 take the largest
    ordered = sorted(phi)  # raw[3] < raw[5] < raw[0] < the three largest
    low = ordered[0] + 0.5 * (ordered[1] - ordered[0])  # 10th percentile: position 0.1 * 5 = 0.5
    high = ordered[4] + 0.5 * (ordered[5] - ordered[4])  # 90th: position 4.5, between two equal values
    clamped = [min(max(p, low), high) for p in phi]
    mean = sum(clamped) / 6
    expected = torch.tensor([0.2 * p / mean for p in clamped], dtype=torch.float64)

    got = concentration(features, centroids, assignments, temperature=0.2, alpha=10)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert low > raw[3] and got[3] == got.min()  # the clamp raised the tightest cluster
    assert got[2] == got[4] == got[1] == got.max() and got.mean().item() == pytest.approx(0.2, abs=1e-12)


def test_concentration_clamps_both_ends_to_the_10th_and_90th_percentile():
    centroids = torch.zeros(5, 2, dtype=torch.float64)
    sums = [1.0, 2.0, 3.0, 4.0, 10.0]  # two members each, at s / 2
    features, assignments = _points_at({k: [s / 2, s / 2] for k, s in enumerate(sums)}, centroids)
    raw = [s / (2 * math.log(12)) for s in sums]
    low = raw[0] + 0.4 * (raw[1] - raw[0])  # position 0.1 * 4 = 0.4
    high = raw[3] + 0.6 * (raw[4] - raw[3])  # position 3.6
    clamped = [min(max(p, low), high) for p in raw]
    expected = torch.tensor([0.1 * p * 5 / sum(clamped) for p in clamped], dtype=torch.float64)
    got = concentration(features, centroids, assignments, temperature=0.1)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert got[4] < 0.1 * raw[4] * 5 / sum(raw)  # the loosest cluster was clamped down


def test_concentration_refuses_clusterings_without_a_spread():
    features = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="at most one member"):
        concentration(features, features.clone(), torch.arange(3), temperature=0.1)
    with pytest.raises(ValueError, match=r"assignments must lie in \[0, 3\)"):
        concentration(features, features.clone(), torch.tensor([0, 1, 3]), temperature=0.1)
    with pytest.raises(ValueError, match="share D"):
        concentration(features, torch.zeros(3, 2), torch.arange(3), temperature=0.1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        concentration(features, features.clone(), torch.arange(3), temperature=0.0)


# --------------------------------------------------------------------------- k-means (E-step)


def hierarchical_blobs(per_leaf=5):
    """16 tight leaves in 8 pairs in 4 groups, in orthogonal directions (scales 100, 10, 1; noise 0.01).

    Every point has nearly the same norm, so L2-normalising (as the E-step does) only rescales them.
    """
    g = torch.Generator().manual_seed(0)
    axes = torch.eye(32)
    rows, truth = [], {4: [], 8: [], 16: []}
    for leaf in range(16):
        center = 100 * axes[leaf // 4] + 10 * axes[4 + leaf // 2] + axes[12 + leaf]
        for _ in range(per_leaf):
            rows.append(center + 0.01 * torch.randn(32, generator=g))
            truth[4].append(leaf // 4), truth[8].append(leaf // 2), truth[16].append(leaf)
    return torch.stack(rows), {k: torch.tensor(v) for k, v in truth.items()}


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_well_separated_blobs_at_every_granularity():
    features, truth = hierarchical_blobs()
    method = make_pcl(projection_dim=32, num_clusters=(4, 8, 16), kmeans_restarts=10)
    method.e_step(features)
    unit = F.normalize(features, dim=1)
    for clusters, m in zip(method.clusterings, (4, 8, 16)):
        assert clusters.prototypes.shape == (m, 32) and clusters.assignments.shape == (80,)
        assert same_partition(clusters.assignments, truth[m]), m
        torch.testing.assert_close(clusters.prototypes.norm(dim=1), torch.ones(m))
        # each prototype is the normalised mean of its cluster's (unit) features
        means = torch.stack([unit[clusters.assignments == k].mean(0) for k in range(m)])
        torch.testing.assert_close(clusters.prototypes, F.normalize(means, dim=1), atol=1e-5, rtol=0)
        assert clusters.concentration.mean().item() == pytest.approx(method.temperature, rel=1e-6)
    centroids, assignments = kmeans(features, 16, seed=3)
    assert same_partition(assignments, truth[16]) and centroids.shape == (16, 32)


def test_kmeans_checks_its_input():
    with pytest.raises(ValueError, match="fewer clusters than points"):
        kmeans(torch.rand(5, 2), 5)
    with pytest.raises(ValueError, match="num_clusters must be an int >= 2"):
        kmeans(torch.rand(5, 2), 1)
    with pytest.raises(ValueError, match=r"floating-point tensor \[N, D\]"):
        kmeans(torch.ones(5, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="finite"):
        kmeans(torch.full((5, 2), math.nan), 2)


def test_the_e_step_clusters_the_momentum_encoders_features(monkeypatch):
    method = make_pcl()
    data = images(40)
    method.attach_dataset(data)
    with torch.no_grad():  # the key network now differs clearly from the query network
        for p in method.key_encoder.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    seen, real = [], clustering.kmeans
    monkeypatch.setattr(clustering, "kmeans", lambda f, m, **kw: seen.append(f.clone()) or real(f, m, **kw))
    method.train()
    method.e_step()
    keys = F.normalize(method.key_projector(method.key_encoder(data)), dim=1).detach()
    queries = F.normalize(method.projector(method.encoder(data)), dim=1).detach()
    assert len(seen) == 2 and all(torch.allclose(f, keys, atol=1e-6) for f in seen)
    assert not torch.allclose(keys, queries, atol=1e-2)
    assert method.key_encoder.training  # the features are computed in eval mode, and the mode given back
    torch.testing.assert_close(method.momentum_features(), keys)


# --------------------------------------------------------------------------- ProtoNCE (M-step)


def test_prototype_term_against_a_float64_loop():
    g = torch.Generator().manual_seed(1)
    b, d, m, r = 6, 5, 9, 3
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    prototypes = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    phi = 0.05 + 0.3 * torch.rand(m, generator=g, dtype=torch.float64)
    own = torch.randint(0, m, (b,), generator=g)
    method = make_pcl(num_negative_prototypes=r, generator=torch.Generator().manual_seed(3))
    negatives = method.negative_prototypes(own, m)

    def loop(negs):
        total = 0.0
        for i in range(b):
            v = q[i] / q[i].norm()
            others = negs[i].tolist() if negs is not None else [j for j in range(m) if j != own[i]]
            logits = [float(v @ prototypes[j]) / float(phi[j]) for j in [int(own[i])] + others]
            total += -logits[0] + math.log(sum(math.exp(x) for x in logits))
        return total / b

    for negs in (None, negatives):
        loss = proto_nce(q, prototypes, phi, own, negs)
        assert loss.dtype == torch.float64 and loss.item() == pytest.approx(loop(negs), abs=1e-12)


def test_negative_prototypes_are_r_distinct_others_or_all_of_them():
    method = make_pcl(num_negative_prototypes=4, generator=torch.Generator().manual_seed(0))
    own = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    for _ in range(20):
        negatives = method.negative_prototypes(own, 7)
        assert negatives.shape == (8, 4)
        for row, s in zip(negatives.tolist(), own.tolist()):
            assert len(set(row)) == 4 and s not in row and all(0 <= j < 7 for j in row)
    assert method.negative_prototypes(own, 5) is None  # r >= M - 1: all the others
    assert make_pcl().negative_prototypes(own, 7) is None  # r None: all the others


def test_pcl_is_moco_during_the_warm_up_then_adds_the_prototype_term():
    pcl = make_pcl(warmup_epochs=2, generator=torch.Generator().manual_seed(5))
    pcl.attach_dataset(images(32))
    torch.manual_seed(0)
    moco = MoCo(LinearEncoder(), projection_dim=8, queue_size=64, shuffle_bn_groups=2,
                generator=torch.Generator().manual_seed(5))
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (pcl, moco)]
    g = torch.Generator().manual_seed(9)
    for step in range(5):
        if step % 2 == 0:
            pcl.on_epoch_start(step // 2)  # epochs 0 and 1 warm up; epoch 2 starts with the E-step
        index = torch.randperm(32, generator=g)[:8]
        views = [images(8, seed=100 + step), images(8, seed=200 + step)]
        losses = [pcl.training_step((views, index)), moco.training_step((views, None))]
        if step < 4:
            assert not pcl.clustered and losses[0].item() == losses[1].item()
        else:
            assert pcl.clustered and losses[0].item() > losses[1].item() + 0.1  # InfoNCE + a positive term
        for optimizer, loss in zip(optimizers, losses):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pcl.on_step_end(), moco.on_step_end()


def test_the_indices_route_each_image_to_its_own_prototypes():
    method = make_pcl()
    method.attach_dataset(images(40))
    method.e_step()
    index = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:8]
    views = [images(8, seed=7), images(8, seed=8)]
    twin = copy.deepcopy(method)
    loss = method.training_step((views, index))
    info = MoCo.training_step(twin, (views, None))  # InfoNCE alone, on the same state
    q = twin.queries(views[0])

    def term(rows):
        return torch.stack([proto_nce(q, c.prototypes, c.concentration, c.assignments[rows])
                            for c in twin.clusterings]).mean()

    torch.testing.assert_close(loss, info + term(index), rtol=1e-5, atol=1e-6)
    assert abs(loss.item() - (info + term(index.flip(0))).item()) > 1e-3  # other images' prototypes differ


def test_symmetric_pcl_averages_the_prototype_term_over_both_queries():
    method = make_pcl(symmetric=True)
    method.attach_dataset(images(40))
    method.e_step()
    index, views = torch.arange(8), [images(8, seed=7), images(8, seed=8)]
    twin = copy.deepcopy(method)
    loss = method.training_step((views, index))
    info = MoCo.training_step(twin, (views, None))
    terms = [proto_nce(twin.queries(x), c.prototypes, c.concentration, c.assignments[index])
             for c in twin.clusterings for x in views]
    torch.testing.assert_close(loss, info + torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- training, state, resume


def run(checkpoint_dir, epochs, resume=False):
    method = make_pcl(num_negative_prototypes=2)  # M = 6: two of the five others drawn at every step
    loader = ViewLoader(method.attach_dataset(images(48)), jitter, batch_size=16, seed=0)
    history = fit(method, loader, epochs=epochs, device="cpu", progress=False, amp=False,
                  checkpoint_dir=checkpoint_dir, resume=resume)
    return method, history


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    straight, history = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed, resumed_history = run(tmp_path / "resumed", 4, resume=True)
    assert history.step_loss == resumed_history.step_loss and len(history.step_loss) == 12
    state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert state.keys() == resumed_state.keys() and all(torch.equal(state[k], resumed_state[k]) for k in state)
    assert straight.clusterings[1].assignments.shape == (48,)


def test_the_state_dict_keeps_the_e_step():
    method = make_pcl()
    method.attach_dataset(images(40))
    method.e_step()
    fresh = make_pcl()  # never clustered: no assignments yet, as when clcourse embed loads a checkpoint
    assert not fresh.clustered
    fresh.load_state_dict(method.state_dict())
    assert fresh.clustered
    for a, b in zip(method.clusterings, fresh.clusterings):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    batch = ([images(8, seed=7), images(8, seed=8)], torch.arange(8))
    torch.manual_seed(1)
    expected = method.training_step(batch)
    torch.manual_seed(1)
    torch.testing.assert_close(fresh.training_step(batch), expected)


def test_a_few_steps_on_tiny_images_through_the_e_steps():
    torch.manual_seed(0)
    method = PCL(SmallCNN(1, width=8, out_dim=16), projection_dim=8, queue_size=64, shuffle_bn_groups=2,
                 num_clusters=(4, 8), warmup_epochs=1, num_negative_prototypes=3)
    loader = ViewLoader(method.attach_dataset(images(64, size=16)), jitter, batch_size=16, seed=0)
    history = fit(method, loader, epochs=3, device="cpu", progress=False, amp=False)
    assert history.steps == 12 and all(math.isfinite(x) for x in history.step_loss)
    assert method.clustered and [c.assignments.shape for c in method.clusterings] == [(64,), (64,)]
    for clusters in method.clusterings:
        assert clusters.concentration.min() > 0
        assert clusters.concentration.mean().item() == pytest.approx(0.2, rel=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("options, message", [
    (dict(num_clusters=()), "num_clusters must be a non-empty sequence"),
    (dict(num_clusters=(1, 4)), "num_clusters must be"),
    (dict(num_clusters="25"), "num_clusters must be"),
    (dict(num_clusters=(2.5,)), "num_clusters must be"),
    (dict(warmup_epochs=-1), "warmup_epochs must be an int >= 0"),
    (dict(num_negative_prototypes=0), "num_negative_prototypes must be an int >= 1"),
    (dict(kmeans_restarts=0), "kmeans_restarts must be an int >= 1"),
    (dict(alpha=0.0), "alpha must be a finite number > 0"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_pcl(**options)


def test_bad_batches_and_data_get_clear_errors():
    method = make_pcl(warmup_epochs=0)
    views = [images(8, seed=1), images(8, seed=2)]
    with pytest.raises(ValueError, match="attach_dataset"):
        method.on_epoch_start(0)  # the E-step needs the training set
    with pytest.raises(ValueError, match="index in the training set"):
        method.training_step((views, None))
    with pytest.raises(ValueError, match="look like class labels"):
        method.training_step((views, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])))
    with pytest.raises(ValueError, match="expects 2 views"):
        method.training_step(([views[0]], torch.arange(8)))
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        method.attach_dataset(torch.zeros(3, 64))
    method.attach_dataset(ImageData(images(40), torch.zeros(40, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 40\)"):
        method.training_step((views, torch.arange(35, 43)))
    with pytest.raises(ValueError, match=r"features must be a floating-point tensor \[N, 8\]"):
        method.e_step(torch.rand(40, 5))
    with pytest.raises(ValueError, match="one row per training image"):
        method.e_step(torch.rand(30, 8))
    with pytest.raises(ValueError, match="use smaller num_clusters"):
        make_pcl(num_clusters=(3, 40)).e_step(torch.rand(40, 8))
    method.on_epoch_start(0)
    assert method.clustered


def test_proto_nce_checks_its_input():
    q, prototypes, phi, own = torch.randn(4, 3), F.normalize(torch.randn(5, 3), dim=1), torch.ones(5), torch.arange(4)
    with pytest.raises(ValueError, match="must not contain its own prototype"):
        proto_nce(q, prototypes, phi, own, torch.tensor([[1], [2], [2], [4]]))
    with pytest.raises(ValueError, match="concentration must be finite and > 0"):
        proto_nce(q, prototypes, torch.zeros(5), own)
    with pytest.raises(ValueError, match=r"concentration must be a floating-point tensor \[5\]"):
        proto_nce(q, prototypes, torch.ones(4), own)
    with pytest.raises(ValueError, match=r"assignments must be prototype indices in \[0, 5\)"):
        proto_nce(q, prototypes, phi, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"prototypes must be \[M, 3\]"):
        proto_nce(q, torch.randn(5, 2), phi, own)
    with pytest.raises(ValueError, match=r"negatives must be an integer tensor \[4, r\]"):
        proto_nce(q, prototypes, phi, own, torch.zeros(4, 0, dtype=torch.long))
