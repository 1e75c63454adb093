import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.augment import BatchedAugment  # noqa: E402
from clcourse.data import load_digits  # noqa: E402
from clcourse.encoders import SmallCNN  # noqa: E402
from clcourse.lessons.triplet import (  # noqa: E402
    NOT_A_NEGATIVE,
    REGIONS,
    Run,
    collapse_signals,
    embed,
    embedding_geometry,
    negative_regions,
    pca_2d,
    pixel_baseline,
    plot_mining,
    plot_snapshots,
    plot_training_signals,
    results_table,
    seeds_table,
    signals_table,
    summarise,
    toy_circle_embedding,
    train_and_evaluate,
)
from clcourse.losses import mine_triplets  # noqa: E402
from clcourse.methods.simclr import SimCLR  # noqa: E402
from clcourse.methods.triplet import Triplet  # noqa: E402


def at_angles(*degrees):
    rad = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_negative_regions_on_the_circle():
    # anchor 0 deg, positive 40 deg: d(a, p) = 2 sin 20 = 0.684; margin 0.3 -> semi-hard up to 0.984
    points = at_angles(0, 40, 20, 50, 120, 10)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    region = negative_regions(points, labels, anchor=0, positive=1, margin=0.3)
    # 20 deg: 0.347 hard; 50 deg: 0.845 semi-hard; 120 deg: 1.732 easy; label 0: not a negative
    assert region.tolist() == [NOT_A_NEGATIVE, NOT_A_NEGATIVE, 0, 1, 2, NOT_A_NEGATIVE]
    assert [REGIONS[r] for r in region[2:5]] == ["hard", "semi-hard", "easy"]


def test_negative_regions_bad_input():
    points, labels = at_angles(0, 40, 90), torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="another point with the anchor"):
        negative_regions(points, labels, anchor=0, positive=2)
    with pytest.raises(ValueError, match="anchor must index"):
        negative_regions(points, labels, anchor=5, positive=1)
    with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
        negative_regions(points, labels[:2], anchor=0, positive=1)


def test_toy_circle_embedding_is_deterministic_and_on_the_circle():
    points, labels = toy_circle_embedding(n_per_class=5, n_classes=4, seed=3)
    assert points.shape == (20, 2) and labels.tolist() == sorted(labels.tolist())
    torch.testing.assert_close(points.norm(dim=1), torch.ones(20))
    torch.testing.assert_close(toy_circle_embedding(n_per_class=5, n_classes=4, seed=3)[0], points)


def test_plot_mining_titles_count_the_anchor_triplets():
    points, labels = toy_circle_embedding(seed=0)
    fig = plot_mining(points, labels, anchor=0, margin=0.3)
    assert len(fig.axes) == 3
    same = (labels == labels[0]) & (torch.arange(len(labels)) != 0)
    d = torch.cdist(points, points)[0]
    farthest = int(torch.where(same, d, -torch.inf).argmax())
    for ax, strategy in zip(fig.axes, ("all", "semi-hard", "hard")):
        a, p, _ = mine_triplets(points, labels, strategy, 0.3)
        n_chosen = int(((a == 0) & (p == farthest)).sum())
        assert ax.get_title().startswith(f"{strategy}: {n_chosen} triplet")
    plt.close(fig)
    with pytest.raises(ValueError, match="no positive"):
        plot_mining(points, torch.arange(len(points)), anchor=0)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_mining(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), anchor=0)


def test_embedding_geometry_sees_a_collapsed_head():
    torch.manual_seed(0)
    method = Triplet(SmallCNN(1, width=8, out_dim=16), projection_dim=8)
    images = torch.rand(32, 1, 16, 16)
    healthy = embedding_geometry(method, images)
    assert set(healthy) == {"rank_features", "rank_embedding", "spread"}
    assert 1.0 <= healthy["rank_features"] <= 16 and 1.0 <= healthy["rank_embedding"] <= 8
    with torch.no_grad():
        last = method.projector.net[-1]
        last.weight.zero_()
        last.bias.fill_(1.0)  # every image -> the same embedding
    assert embedding_geometry(method, images)["spread"] < 1e-4 < healthy["spread"]
    assert method.training  # restored


@pytest.fixture(scope="module")
def tiny_runs():
    train = load_digits(16, "train").subset(torch.arange(64))
    test = load_digits(16, "test").subset(torch.arange(40))
    settings = dict(train=train, test=test, augment=BatchedAugment.digits(16), budget=dict(steps=5),
                    batch_size=16, fractions=(0.5,), probe_seeds=(0, 1), track_images=16, snapshot_steps=(0, 2, 5))
    runs = []
    for name, method in [("triplet", Triplet(SmallCNN(1, width=8, out_dim=16), 8, strategy="hard")),
                         ("simclr", SimCLR(SmallCNN(1, width=8, out_dim=16), 8))]:
        torch.manual_seed(0)
        runs.append(train_and_evaluate(name, method, **settings))
    return runs


def test_train_and_evaluate_records_curve_probes_and_stats(tiny_runs):
    run = tiny_runs[0]
    assert run.history.steps == 5 and len(run.method.stats) == 5
    assert [c["step"] for c in run.curve] == [0, 4, 5]  # before training, then after each epoch (4 batches)
    assert set(run.probes) == {0.5} and len(run.probes[0.5].accuracies) == 2
    assert 0.0 <= run.knn <= 1.0 and run.seconds > 0


def test_tables_and_signal_plot(tiny_runs):
    table = results_table(tiny_runs)
    assert "probe 50%" in table and "triplet" in table and "simclr" in table
    signals = signals_table(tiny_runs[:1], margin=0.2)
    assert "loss/m" in signals and "triplet" in signals
    fig = plot_training_signals(tiny_runs[:1], margin=0.2)
    assert len(fig.axes) == 4 and len(fig.axes[0].lines) == 2  # the run and the margin line
    plt.close(fig)


def test_budget_none_evaluates_the_untrained_method_and_tables_tolerate_missing_probes(tiny_runs):
    train = load_digits(16, "train").subset(torch.arange(40))
    test = load_digits(16, "test").subset(torch.arange(20))
    torch.manual_seed(0)
    baseline = train_and_evaluate("untrained", Triplet(SmallCNN(1, width=8, out_dim=16), 8), train, test, None,
                                  budget=None, fractions=(), track_images=8)
    assert baseline.history.steps == 0 and len(baseline.curve) == 1 and baseline.probes == {}
    table = results_table([baseline, tiny_runs[1]])
    assert "untrained" in table and table.count("probe 50%") == 1


def test_snapshots_are_taken_at_the_steps_asked_for_and_the_hook_is_removed(tiny_runs):
    for run in tiny_runs:
        assert sorted(run.snapshots) == [0, 2, 5]
        for z in run.snapshots.values():
            assert z.shape == (16, 8)
            torch.testing.assert_close(z.norm(dim=1), torch.ones(16))
        assert not torch.equal(run.snapshots[0], run.snapshots[5])  # training moved the embedding
        assert "on_step_end" not in vars(run.method)  # the class's own hook is back
    torch.testing.assert_close(tiny_runs[0].snapshots[5], embed(tiny_runs[0].method, load_digits(16, "test").images[:16]))


def test_snapshot_steps_need_tracking_images():
    train = load_digits(16, "train").subset(torch.arange(32))
    with pytest.raises(ValueError, match="track_images"):
        train_and_evaluate("x", Triplet(SmallCNN(1, width=8, out_dim=16), 8), train, train, BatchedAugment.digits(16),
                           budget={"steps": 1}, batch_size=16, fractions=(), track_images=0, snapshot_steps=(1,))


def test_embed_uses_batch_statistics_and_leaves_the_method_alone():
    torch.manual_seed(0)
    method = Triplet(SmallCNN(1, width=8, out_dim=16), projection_dim=8).eval()
    bn = method.encoder.features[0][1]
    before = bn.running_mean.clone()
    images = torch.rand(32, 1, 16, 16) * 5
    z = embed(method, images)
    assert z.shape == (32, 8) and not method.training
    torch.testing.assert_close(bn.running_mean, before)
    with torch.no_grad():  # what a training batch of these images would see
        expected = torch.nn.functional.normalize(method.train().projector(method.encoder(images)), dim=1)
    torch.testing.assert_close(z, expected)


def test_pca_2d_keeps_the_scale_and_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 16, generator=g) * torch.linspace(3, 0.1, 16)
    xy = pca_2d(z)
    assert xy.shape == (200, 2)
    torch.testing.assert_close(torch.from_numpy(pca_2d(0.1 * z)), 0.1 * torch.from_numpy(xy), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(pca_2d(-z)).abs(), torch.from_numpy(xy).abs(), rtol=1e-4, atol=1e-5)
    assert abs(xy[:, 0].std()) > abs(xy[:, 1].std())  # the first component carries the most variance
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        pca_2d(torch.randn(1, 4))


def test_plot_snapshots_draws_every_panel_on_one_scale(tiny_runs):
    labels = load_digits(16, "test").labels[:16]
    fig = plot_snapshots(tiny_runs, labels)
    assert len(fig.axes) == 6
    assert len({ax.get_xlim() for ax in fig.axes}) == 1 and fig.axes[0].get_title().startswith("step 0: spread")
    plt.close(fig)
    no_snapshots = Run("none", None, tiny_runs[0].history)
    with pytest.raises(ValueError, match="snapshots at the same steps"):
        plot_snapshots([tiny_runs[0], no_snapshots], labels)


def test_pixel_baseline_and_seed_summaries(tiny_runs):
    train = load_digits(16, "train").subset(torch.arange(64))
    test = load_digits(16, "test").subset(torch.arange(40))
    pixels = pixel_baseline(train, test, fractions=(0.5,), probe_seeds=(0, 1))
    assert pixels.method is None and 0 <= pixels.knn <= 1 and set(pixels.probes) == {0.5}
    assert "raw pixels" in results_table([pixels, *tiny_runs])
    summary = summarise("both", tiny_runs)
    accuracies = [r.probes[0.5].mean for r in tiny_runs]
    assert summary.seeds == 2 and summary.probes[0.5][0] == pytest.approx(sum(accuracies) / 2)
    assert summary.probes[0.5][1] == pytest.approx(abs(accuracies[0] - accuracies[1]) / math.sqrt(2))  # sample std
    assert summarise("pixels", [pixels]).seeds == 0
    table = seeds_table([summarise("pixels", [pixels]), summary])
    assert "±" in table.splitlines()[3] and "±" not in table.splitlines()[2]
    with pytest.raises(ValueError, match="at least one run"):
        summarise("none", [])


def test_collapse_signals_match_the_table(tiny_runs):
    signals = collapse_signals(tiny_runs[0], margin=0.2)
    stats = tiny_runs[0].method.stats
    assert signals["zero_first"] == stats[0].zero_loss_fraction
    assert signals["spread_first"] == stats[0].mean_distance
    assert f"{signals['loss_over_margin']:6.2f}" in signals_table(tiny_runs[:1], margin=0.2)
