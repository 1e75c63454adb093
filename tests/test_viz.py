"""Tests of clcourse.viz: plots, image grids and umap_2d (the embedding explorer: test_viz_explorer.py).

Only test_umap_2d imports umap-learn; it costs ~25 s cold (import + numba compile).
"""

import importlib
import sys
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from clcourse.viz import plot_embedding, show_views, umap_2d  # noqa: E402
from clcourse.viz.plots import spread_out_points  # noqa: E402

N = 40


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        xy=torch.randn(N, 2, generator=g),
        labels=torch.arange(N) % 4,
        images=torch.rand(N, 1, 8, 8, generator=g),
        rgb=torch.rand(N, 3, 8, 8, generator=g),
    )


# -- plot_embedding ------------------------------------------------------------------------


def test_plot_embedding_colours_points_by_label_with_named_legend(data):
    ax = plot_embedding(data.xy, data.labels, title="t", label_names=["a", "b", "c", "d"])
    scatter = ax.collections[0]
    np.testing.assert_allclose(scatter.get_offsets(), data.xy.numpy(), rtol=1e-6)
    colors = scatter.get_facecolors()
    assert len(colors) == N
    # same label -> same colour, different label -> different colour
    assert np.allclose(colors[0], colors[4]) and not np.allclose(colors[0], colors[1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c", "d"]
    assert ax.get_title() == "t"


def test_a_label_keeps_its_colour_when_another_label_is_missing(data):
    every = plot_embedding(data.xy, torch.arange(N) % 10, ax=plt.subplots()[1]).collections[0].get_facecolors()
    without_4 = torch.arange(N) % 10
    without_4[without_4 == 4] = 3
    fewer = plot_embedding(data.xy, without_4, ax=plt.subplots()[1]).collections[0].get_facecolors()
    fives = (torch.arange(N) % 10 == 5).numpy()
    np.testing.assert_allclose(fewer[fives], every[fives])  # 5 keeps tab10's sixth colour, not the fifth


def test_plot_embedding_draws_framed_thumbnails(data):
    ax = plot_embedding(data.xy.numpy(), data.labels.numpy(), images=data.rgb, n_thumbnails=5)
    boxes = [a for a in ax.artists if isinstance(a, AnnotationBbox)]
    assert len(boxes) == 5
    ax.figure.canvas.draw()  # thumbnails must render


def test_plot_embedding_uses_a_colour_scale_for_many_values(data):
    ax = plot_embedding(data.xy, torch.linspace(0, 1, N), ax=plt.subplots()[1])
    assert ax.get_legend() is None
    assert len(ax.figure.axes) == 2  # the colorbar


@pytest.mark.parametrize(
    "xy, labels, images, label_names, message",
    [
        (np.zeros((N, 3)), np.zeros(N), None, None, r"\[N, 2\]"),
        (np.zeros((N, 2)), np.zeros(N - 1), None, None, r"labels must have shape \[N\] = \[40\]"),
        (np.zeros((N, 2)), np.zeros(N), np.zeros((N - 1, 1, 4, 4)), None, "expected 40, got 39"),
        (np.zeros((N, 2)), np.zeros(N), np.zeros((N, 2, 4, 4)), None, "C = 1 or 3"),
        (np.zeros((N, 2)), np.zeros(N), np.full((N, 1, 4, 4), 255.0), None, r"\[0, 1\]"),
        (np.zeros((N, 2)), np.arange(N) % 3, None, ["a", "b"], "label_names has 2 names"),
    ],
)
def test_plot_embedding_rejects_bad_input(xy, labels, images, label_names, message):
    with pytest.raises(ValueError, match=message):
        plot_embedding(xy, labels, images=images, label_names=label_names)


def test_spread_out_points_picks_distinct_points():
    xy = np.random.default_rng(0).normal(size=(100, 2))
    chosen = spread_out_points(xy, 10)
    assert len(chosen) == len(set(chosen)) == 10
    assert spread_out_points(np.zeros((5, 2)), 3) == [0]  # all points coincide: one is enough


# -- show_views ----------------------------------------------------------------------------


def shown_pixels(fig):
    return [ax.images[0].get_array() for ax in fig.axes]


def test_show_views_per_sample_pipeline_grid_and_reproducibility(data):
    crop = v2.RandomResizedCrop(8, scale=(0.2, 1.0), antialias=True)
    rng_before = torch.get_rng_state()
    fig = show_views(data.rgb[:3], crop, n_views=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert len(fig.axes) == 3 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["original", "view 1", "view 2"]
    np.testing.assert_allclose(shown_pixels(fig)[0], data.rgb[0].permute(1, 2, 0).numpy())

    again = show_views(data.rgb[:3], crop, n_views=2, generator=torch.Generator().manual_seed(1))
    other = show_views(data.rgb[:3], crop, n_views=2, generator=torch.Generator().manual_seed(2))
    same = [np.array_equal(a, b) for a, b in zip(shown_pixels(fig), shown_pixels(again))]
    assert all(same)
    assert not all(np.array_equal(a, b) for a, b in zip(shown_pixels(fig), shown_pixels(other)))


def test_show_views_calls_a_batched_pipeline_once_per_view(data):
    class FlipBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def sample_params(self, batch_size, generator=None):
            return None

        def forward(self, x, generator=None):
            self.calls.append((x.shape, generator))
            return x.flip(-1)

    pipeline, generator = FlipBatch(), torch.Generator()
    fig = show_views(data.images[:2], pipeline, n_views=3, generator=generator)
    assert pipeline.calls == [(torch.Size([2, 1, 8, 8]), generator)] * 3
    assert len(fig.axes) == 2 * 4
    np.testing.assert_allclose(shown_pixels(fig)[1], data.images[0, 0].flip(-1).numpy())


def test_show_views_detects_a_generator_argument(data):
    calls = []

    def batched(x, generator=None):
        calls.append(x.shape)
        return x

    show_views(data.images[0], batched, n_views=2)  # one [C, H, W] image is a batch of one
    assert calls == [torch.Size([1, 1, 8, 8])] * 2


def test_show_views_rejects_bad_input(data):
    with pytest.raises(ValueError, match="n_views"):
        show_views(data.images, lambda x: x, n_views=0)
    with pytest.raises(TypeError, match="callable"):
        show_views(data.images, "crop")
    with pytest.raises(TypeError, match="must return a tensor"):
        show_views(data.images, lambda x: x.numpy())
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        show_views(data.images, lambda x: x[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        show_views(data.images * 255, lambda x: x)


# -- umap_2d -------------------------------------------------------------------------------


def test_viz_imports_without_umap_and_validates_before_importing_it(monkeypatch):
    import clcourse

    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    monkeypatch.setattr(clcourse, "viz", clcourse.viz)  # restored with sys.modules afterwards
    for name in [m for m in sys.modules if m.startswith("clcourse.viz")]:
        monkeypatch.delitem(sys.modules, name)
    viz = importlib.import_module("clcourse.viz")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        viz.umap_2d(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        viz.umap_2d(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="metric"):
        viz.umap_2d(np.zeros((10, 3)), metric="cos")
    with pytest.raises(ImportError, match="pip install umap-learn"):
        viz.umap_2d(np.random.rand(10, 3))


def test_umap_2d_separates_clusters_and_is_deterministic():
    """The one test that fits UMAP: ~25 s cold (import + numba compile), well under 1 s afterwards."""
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 32, generator=g) * 3
    features = centres[labels] + torch.randn(200, 32, generator=g)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xy = umap_2d(features, seed=0)
        # numba's first fit in a process resets OpenMP's thread count, which torch shares; umap_2d restores it
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert xy.shape == (200, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    knn = KNeighborsClassifier(5).fit(xy, labels.numpy())
    assert knn.score(xy, labels.numpy()) > 0.95
    np.testing.assert_array_equal(umap_2d(features.numpy(), seed=0), xy)


def test_image_grid_titles_and_shape():
    from clcourse.viz import image_grid

    fig = image_grid(torch.rand(10, 3, 8, 8), titles=[str(i) for i in range(10)], ncols=4)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 12 and len(shown) == 10 and shown[3].get_title() == "3"
    with pytest.raises(ValueError, match="one string per image"):
        image_grid(torch.rand(2, 1, 8, 8), titles=["a"])
