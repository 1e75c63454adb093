"""Tests of lesson 02's experiment helpers: features before and after the head, the applied
augmentation as a target, the transformation probe, and the h / z comparison with its plots."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.augment import BatchedAugment, augmented_views, view_targets  # noqa: E402
from clcourse.encoders import SmallCNN  # noqa: E402
from clcourse.evaluate import (  # noqa: E402
    extract_features,
    head_features,
    transformation_predictions,
    transformation_probe,
)
from clcourse.lessons.heads import (  # noqa: E402
    RepresentationReport,
    SeedStats,
    compare_h_z,
    feature_report,
    format_reports,
    format_seed_table,
    h_minus_z,
    neighbour_agreement,
    over_seeds,
    plot_over_seeds,
)
from clcourse.methods.simclr import SimCLR  # noqa: E402
from clcourse.viz.reports import plot_reports  # noqa: E402


def _simclr(head_layers=2):
    torch.manual_seed(0)
    return SimCLR(SmallCNN(1, width=4, out_dim=12), projection_dim=6, head_layers=head_layers)


def test_head_features_match_encoder_and_projector():
    model = _simclr()
    x, y = torch.rand(10, 1, 16, 16), torch.arange(10)
    h, z, labels = head_features(model, (x, y), batch_size=4)
    assert h.shape == (10, 12) and z.shape == (10, 6) and torch.equal(labels, y)
    torch.testing.assert_close(h, extract_features(model.encoder, x)[0])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(z, model.project(x))
    h0, z0, _ = head_features(_simclr(head_layers=0), x)
    torch.testing.assert_close(h0, z0)


def test_view_targets_effective_values():
    augment = BatchedAugment.simclr(8, rotation_degrees=10)
    params = augment.sample_params(200, torch.Generator().manual_seed(0))
    t = view_targets(params, 8, 8)
    assert all(v.shape == (200,) for v in t.values())
    boxes = params.crop_boxes(8, 8)
    torch.testing.assert_close(t["crop_area"], (boxes[:, 2] * boxes[:, 3]).float() / 64)
    no_jitter = ~params.jitter
    assert no_jitter.any() and (t["brightness"][no_jitter] == 1).all() and (t["hue"][no_jitter] == 0).all()
    assert (t["blur_sigma"][~params.blur] == 0).all()
    assert set(t["gray"].unique().tolist()) <= {0.0, 1.0}
    assert t["rotation"].abs().max() <= 10


def test_augmented_views_shapes_and_determinism():
    augment = BatchedAugment.digits(16)
    images = torch.rand(6, 1, 16, 16)
    views, targets = augmented_views(images, augment, n_views=2, seed=3, targets=["rotation", "crop_area"])
    assert views.shape == (12, 1, 16, 16) and set(targets) == {"rotation", "crop_area"}
    assert targets["rotation"].shape == (12,)
    again, _ = augmented_views(images, augment, n_views=2, seed=3)
    torch.testing.assert_close(views, again)
    with pytest.raises(ValueError, match="unknown targets"):
        augmented_views(images, augment, targets=["colour"])


def test_transformation_probe_reads_linear_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(400, 10, generator=g), torch.randn(200, 10, generator=g)
    w = torch.randn(10, generator=g)
    assert transformation_probe(x_train, x_train @ w, x_test, x_test @ w) > 0.99
    noise_train, noise_test = torch.randn(400, generator=g), torch.randn(200, generator=g)
    assert transformation_probe(x_train, noise_train, x_test, noise_test) < 0.1
    pred = transformation_predictions(x_train, x_train @ w, x_test)
    assert pred.shape == (200,)
    with pytest.raises(ValueError, match="constant"):
        transformation_probe(x_train, torch.zeros(400), x_test, x_test @ w)
    with pytest.raises(ValueError, match="features"):
        transformation_probe(x_train, x_train @ w, x_test[:, :5], x_test @ w)


def test_compare_h_z_format_and_plot():
    model = _simclr()
    g = torch.Generator().manual_seed(1)
    train = (torch.rand(60, 1, 16, 16, generator=g), torch.arange(60) % 3)
    test = (torch.rand(30, 1, 16, 16, generator=g), torch.arange(30) % 3)
    augment = BatchedAugment.digits(16)
    vt = augmented_views(train[0], augment, seed=1, targets=["rotation"])
    ve = augmented_views(test[0], augment, seed=2, targets=["rotation"])
    reports = compare_h_z(model, train, test, fractions=(0.1,), seeds=(0, 1), views=(*vt, *ve))
    assert [r.name for r in reports] == ["h", "z"] and [r.dim for r in reports] == [12, 6]
    assert set(reports[0].probes) == {0.1} and 0 <= reports[0].knn <= 1
    assert set(reports[1].transforms) == {"rotation"} and np.isfinite(reports[1].transforms["rotation"])
    text = format_reports({"tiny": reports})
    assert "probe 10%" in text and "R2 rotation" in text and text.count("tiny") == 2
    axes = plot_reports({"tiny": reports, "again": reports})
    assert len(axes) == 2 and axes[0].get_title().startswith("linear probe")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_compare_h_z_without_head_reports_the_same_numbers_twice():
    model = _simclr(head_layers=0)
    g = torch.Generator().manual_seed(2)
    train = (torch.rand(40, 1, 16, 16, generator=g), torch.arange(40) % 2)
    test = (torch.rand(20, 1, 16, 16, generator=g), torch.arange(20) % 2)
    h, z = compare_h_z(model, train, test, fractions=(0.25,), seeds=(0,))
    assert z.name == "z" and z.dim == h.dim == 12
    assert z.probes[0.25].mean == h.probes[0.25].mean and z.knn == h.knn and z.rank == h.rank


def test_feature_report_measures_raw_features_like_compare_h_z():
    g = torch.Generator().manual_seed(3)
    train = (torch.rand(40, 1, 4, 4, generator=g), torch.arange(40) % 2)
    test = (torch.rand(20, 1, 4, 4, generator=g), torch.arange(20) % 2)
    targets = {"rotation": torch.randn(40, generator=g)}
    report = feature_report("pixels", *train, *test, fractions=(0.5,), seeds=(0,),
                            views=(train[0], targets, test[0], {"rotation": torch.randn(20, generator=g)}))
    assert report.name == "pixels" and report.dim == 16 and set(report.transforms) == {"rotation"}
    assert 0 <= report.probes[0.5].mean <= 1 and 1 <= report.rank <= 16


def _report(name, probe, knn=0.9, rank=3.0, r2=0.5):
    from clcourse.evaluate import ProbeResult

    return RepresentationReport(name, 4, {0.1: ProbeResult(probe, 0.0, [probe], 10)}, knn, rank, {"rotation": r2})


def test_over_seeds_means_and_sample_std_and_single_runs_have_no_spread():
    results = {"head": [[_report("h", 0.90), _report("z", 0.80)], [_report("h", 0.94), _report("z", 0.86)]],
               "pixels": [[_report("pixels", 0.85)]]}
    table = over_seeds(results)
    h = table["head"]["h"]["probe 10%"]
    assert h.mean == pytest.approx(92.0) and h.std == pytest.approx(np.std([90, 94], ddof=1))
    assert h.values == pytest.approx((90.0, 94.0))
    assert set(table["head"]["z"]) == {"probe 10%", "kNN", "eff.rank", "R2 rotation"}
    assert np.isnan(table["pixels"]["pixels"]["kNN"].std) and str(table["pixels"]["pixels"]["kNN"]) == "90.0"
    gap = h_minus_z(results["head"], 0.1)
    assert gap.values == pytest.approx((10.0, 8.0)) and gap.mean == pytest.approx(9.0)
    text = format_seed_table(table, ["probe 10%", "R2 rotation"])
    assert "92.0 ± 2.8" in text and text.count("head") == 2 and "pixels" in text
    axes = plot_over_seeds({"head": table["head"]}, "probe 10%", {"raw pixels": 85.0})
    assert axes.get_title() == "probe 10%"
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ValueError, match="same features"):
        over_seeds({"head": [[_report("h", 0.9)], [_report("z", 0.9)]]})
    with pytest.raises(ValueError, match="'h' and 'z'"):
        h_minus_z([[_report("h", 0.9)]])
    with pytest.raises(ValueError, match="at least one"):
        SeedStats.of([])


def test_neighbour_agreement_finds_a_factor_that_shapes_neighbourhoods_and_not_one_that_does_not():
    g = torch.Generator().manual_seed(4)
    angle = torch.rand(300, generator=g) * 30 - 15
    # the factor as a direction on the circle: cosine neighbours share it
    kept = torch.stack([torch.cos(angle / 30), torch.sin(angle / 30)], 1) + 0.01 * torch.randn(300, 2, generator=g)
    assert neighbour_agreement(kept, angle, k=5) > 0.95
    ignored = torch.randn(300, 8, generator=g)
    assert abs(neighbour_agreement(ignored, angle, k=10)) < 0.15
    with pytest.raises(ValueError, match="k must be"):
        neighbour_agreement(kept, angle, k=300)
    with pytest.raises(ValueError, match="values must be"):
        neighbour_agreement(kept, angle[:10])
    with pytest.raises(ValueError, match="constant"):
        neighbour_agreement(kept, torch.zeros(300))
