"""Tests of the embedding explorer (clcourse.viz.explorer): neighbours, kNN votes, colour options, picking, hovering.

The canvas's mouse handling is driven with matplotlib MouseEvents at a point's pixels, the way ipympl delivers
a browser's clicks; tests/test_browser.py clicks in a real browser.
"""

import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from ipympl.backend_nbagg import Canvas
from matplotlib.backend_bases import MouseEvent

from clcourse.viz import EmbeddingExplorer, embedding_explorer
from clcourse.viz.explorer import (
    HOVER_HINT,
    NEUTRAL,
    PANEL_CLASS,
    RIGHT,
    WRONG,
)
from clcourse.viz.neighbours import knn_vote, nearest_neighbours, new_neighbour_counts

N = 40
# ipympl's Toolbar passes its canvas on to traitlets, which warns; nothing the explorer does or can change
pytestmark = pytest.mark.filterwarnings("ignore:Passing unrecognized arguments:DeprecationWarning")


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % 4
    return SimpleNamespace(
        xy=torch.randn(N, 2, generator=g),
        labels=labels,
        rgb=torch.rand(N, 3, 8, 8, generator=g),
        images=torch.rand(N, 1, 8, 8, generator=g),
        # epoch 0: noise; epoch 5: each class around its own direction, so neighbours share the class
        features={"epoch 0": torch.randn(N, 16, generator=g),
                  "epoch 5": 4 * torch.randn(4, 16, generator=g)[labels] + torch.randn(N, 16, generator=g)},
    )


@pytest.fixture
def explorer(data):
    projections = {"epoch 0": data.xy, "epoch 5": data.xy * 3 + 1}
    factors = {"color": torch.arange(N) % 2}
    names = {"class": ["w", "x", "y", "z"], "color": ["red", "blue"]}
    return embedding_explorer(projections, images=data.rgb, factors=factors, label_names=names, labels=data.labels,
                              features=data.features)


def canvas_event(explorer, name, index=None, at=None, **kwargs):
    """A MouseEvent on the explorer's canvas at point ``index`` (or ``at`` (x, y) CSS pixels from the top-left)."""
    x, y = explorer.point_on_canvas(index) if index is not None else at
    return MouseEvent(name, explorer.figure.canvas, x, explorer.figure.bbox.height - y, **kwargs)


# -- neighbours and votes on hand-made examples ----------------------------------------------


def test_nearest_neighbours_rank_by_cosine_or_distance():
    points = np.array([[1.0, 0.0], [5.0, 0.5], [0.0, 2.0], [-1.0, 0.2]])
    by_angle = nearest_neighbours(points, k=2)
    # point 0's direction is nearly point 1's, though point 1 is far away
    assert by_angle.indices[0].tolist() == [1, 2]
    np.testing.assert_allclose(by_angle.scores[0], [5 / np.hypot(5, 0.5), 0.0], atol=1e-6)
    assert by_angle.metric == "cosine"
    by_distance = nearest_neighbours(points, k=2, metric="euclidean")
    assert by_distance.indices[0].tolist() == [3, 2]
    np.testing.assert_allclose(by_distance.scores[0], [np.hypot(2, 0.2), np.hypot(1, 2)], rtol=1e-6)


def test_nearest_neighbours_never_return_the_point_itself_and_chunks_agree():
    twins = nearest_neighbours(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), k=1)
    assert twins.indices[:, 0].tolist() == [1, 0, 0]
    points = np.random.default_rng(0).normal(size=(50, 8))
    whole, chunked = nearest_neighbours(points, k=5), nearest_neighbours(points, k=5, chunk=7)
    np.testing.assert_array_equal(whole.indices, chunked.indices)
    assert not (whole.indices == np.arange(50)[:, None]).any()


def test_nearest_neighbours_reject_bad_input():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 2\]"):
        nearest_neighbours(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match=r"\[N, D\] with N >= 2, got \[5\]"):
        nearest_neighbours(np.zeros(5), k=1)
    with pytest.raises(ValueError, match="metric"):
        nearest_neighbours(np.zeros((3, 2)), k=1, metric="cos")


def test_knn_vote_takes_the_majority_and_breaks_ties_by_nearness():
    labels = np.array([0, 0, 1, 1, 2])
    neighbours = np.array([
        [2, 3, 0, 4],  # 1, 1, 0, 2: majority 1
        [2, 0, 3, 1],  # 1, 0, 1, 0: tie, the nearest voter says 1
        [0, 2, 1, 3],  # 0, 1, 0, 1: tie, the nearest voter says 0
    ])
    assert knn_vote(neighbours, labels).tolist() == [1, 1, 0]
    assert knn_vote(np.array([[1], [0]]), np.array(["cat", "dog"])).tolist() == ["dog", "cat"]


def test_new_neighbour_counts():
    before = np.array([[1, 2, 3], [0, 2, 3]])
    after = np.array([[3, 4, 1], [3, 2, 0]])
    assert new_neighbour_counts(before, after).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"same shape \[N, k\], got \[2, 3\] and \[2, 2\]"):
        new_neighbour_counts(before, after[:, :2])


# -- the explorer's state and colour options ---------------------------------------------------


def test_explorer_starts_on_first_choices(explorer, data):
    assert (explorer.state.color_by, explorer.state.projection, explorer.state.selected) == ("class", "epoch 0", 0)
    np.testing.assert_allclose(explorer.last_xy, data.xy.numpy(), rtol=1e-6)
    assert list(explorer.color_by_control.options) == ["class", "color", "kNN vote", "new neighbours"]
    assert "class: 0 (w)" in explorer.info.value and "color: 0 (red)" in explorer.info.value
    assert explorer.status.value == HOVER_HINT


def test_the_canvas_is_an_ipympl_widget_and_pyplot_is_left_alone(explorer):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    assert isinstance(explorer.figure.canvas, Canvas)
    assert explorer.figure.canvas in explorer.widget.children[-1].children
    assert matplotlib.get_backend() == backend and plt.get_fignums() == []  # no figure shown twice by pyplot


def test_set_color_by_changes_point_colours(explorer):
    by_class = explorer.last_colors.copy()
    explorer.set_color_by("color")
    assert explorer.state.color_by == "color"
    # points 1 and 3: different classes, same colour factor
    assert not np.allclose(by_class[1], by_class[3])
    assert np.allclose(explorer.last_colors[1], explorer.last_colors[3])
    assert explorer.color_by_control.value == "color"  # the control follows a change made in code


def test_changes_move_and_recolour_the_drawn_points(explorer, data):
    scatter, artists = explorer._scatter, len(explorer._ax.collections)
    explorer.set_projection("epoch 5")
    explorer.set_color_by("kNN vote")
    assert explorer._scatter is scatter and len(explorer._ax.collections) == artists  # nothing plotted again
    np.testing.assert_allclose(explorer.last_xy, data.xy.numpy() * 3 + 1, rtol=1e-5)
    assert explorer.state.projection == "epoch 5"
    x0, x1 = explorer._ax.get_xlim()
    assert x0 < explorer.last_xy[:, 0].min() and explorer.last_xy[:, 0].max() < x1  # every point in view


def test_a_zoom_survives_selecting_and_recolouring_but_not_a_new_checkpoint(explorer):
    explorer._ax.set_xlim(0.0, 0.5)  # as the toolbar's zoom does
    explorer.select_point(4)
    explorer.set_color_by("color")
    assert explorer._ax.get_xlim() == (0.0, 0.5)
    explorer.set_projection("epoch 5")
    assert explorer._ax.get_xlim() != (0.0, 0.5)


def test_every_colour_option_draws_for_every_projection(explorer):
    for projection in explorer.projections:
        for option in explorer.color_options:
            explorer.set_projection(projection)
            explorer.set_color_by(option)
            explorer.figure.canvas.draw()
            assert explorer.last_colors.shape == (N, 4)
            explorer.select_point(5)
            assert "point 5" in explorer.info.value


def test_knn_vote_colours_the_points_whose_neighbours_vote_wrong():
    # two classes in two directions of feature space, and point 5 (class 0) among the class-1 points
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    features = np.where(labels[:, None] == 0, [[1.0, 0.0]], [[0.0, 1.0]]) + np.linspace(0, 0.1, 11)[:, None]
    features[5] = [0.05, 1.0]
    explorer = EmbeddingExplorer({"only": np.random.default_rng(0).normal(size=(11, 2))}, labels=labels,
                                 features={"only": features}, k=3)
    explorer.set_color_by("kNN vote")
    wrong = [i for i in range(11) if np.allclose(explorer.last_colors[i], WRONG)]
    assert wrong == [5]
    assert all(np.allclose(explorer.last_colors[i], RIGHT) for i in range(11) if i != 5)
    assert [text.get_text() for text in explorer._ax.get_legend().get_texts()] == ["right (91%)", "wrong (1)"]
    explorer.select_point(5)
    assert "kNN vote: 1, wrong" in explorer.info.value
    assert set(explorer.last_neighbours.tolist()) <= {6, 7, 8, 9, 10}
    assert "3 of 3 of another class" in explorer.panel.value and explorer.panel.value.count("✗") == 3


def test_new_neighbours_count_what_changed_since_the_previous_checkpoint(data):
    shuffled = data.features["epoch 5"][torch.randperm(N, generator=torch.Generator().manual_seed(1))]
    features = {"a": data.features["epoch 5"], "b": data.features["epoch 5"], "c": shuffled}
    explorer = EmbeddingExplorer({name: data.xy for name in features}, features=features, k=4)
    explorer.set_color_by("new neighbours")
    assert np.allclose(explorer.last_colors, NEUTRAL)  # the first checkpoint has nothing before it
    explorer.set_projection("b")
    assert np.allclose(explorer.last_colors, explorer.last_colors[0])  # same features: 0 new everywhere
    assert "new neighbours: 0 of 4 since a" in explorer.info.value
    explorer.set_projection("c")
    counts = new_neighbour_counts(explorer.neighbours("b").indices, explorer.neighbours("c").indices)
    assert counts.max() > 0
    assert f"new neighbours: {counts[0]} of 4 since b" in explorer.info.value
    assert len(explorer.figure.axes[1].collections) > 0 and explorer.figure.axes[1].get_visible()  # colour bar


# -- selecting, picking, hovering ----------------------------------------------------------------


def test_select_point_shows_its_image_and_its_neighbours(explorer, data):
    explorer.select_point(7)
    assert explorer.state.selected == 7 and explorer.point_control.value == 7
    np.testing.assert_allclose(explorer.last_image, data.rgb[7].permute(1, 2, 0).numpy())
    assert "point 7" in explorer.info.value
    expected = nearest_neighbours(data.features["epoch 0"], k=8).indices[7]
    np.testing.assert_array_equal(explorer.last_neighbours, expected)
    panel = explorer.panel.value
    assert f'class="{PANEL_CLASS}"' in panel and "<b>point 7</b>" in panel
    assert panel.count("<img") == 1 + 8 and "in the epoch 0 features, by cosine similarity" in panel
    others = sum(int(data.labels[j] != data.labels[7]) for j in expected)
    assert f"{others} of 8 of another class" in panel and panel.count("✗") == others
    np.testing.assert_allclose(explorer._neighbour_rings.get_offsets(), data.xy.numpy()[expected], rtol=1e-6)


def test_neighbours_come_from_the_shown_checkpoint(explorer, data):
    explorer.select_point(3)
    explorer.set_projection("epoch 5")
    expected = nearest_neighbours(data.features["epoch 5"], k=8).indices[3]
    np.testing.assert_array_equal(explorer.last_neighbours, expected)
    assert all(data.labels[j] == data.labels[3] for j in expected)  # the trained checkpoint groups the classes


def test_without_features_neighbours_are_searched_in_2d(data):
    explorer = EmbeddingExplorer({"a": data.xy}, images=data.images, labels=data.labels, k=3)
    explorer.select_point(2)
    np.testing.assert_array_equal(explorer.last_neighbours,
                                  nearest_neighbours(data.xy, k=3, metric="euclidean").indices[2])
    assert "2-D projection (no features given), by distance" in explorer.panel.value


def test_a_click_on_a_point_selects_it(explorer):
    explorer.set_projection("epoch 5")
    canvas_event(explorer, "button_press_event", 11, button=1)._process()  # pick_event -> _on_pick
    assert explorer.state.selected == 11
    assert "<b>point 11</b>" in explorer.panel.value


def test_pick_selects_the_nearest_candidate(explorer, data):
    target = 11
    x, y = data.xy[target].tolist()
    event = SimpleNamespace(artist=explorer._scatter, ind=[2, target, 30], mouseevent=SimpleNamespace(xdata=x, ydata=y))
    explorer._on_pick(event)
    assert explorer.state.selected == target


def test_hovering_names_the_point_and_leaving_clears_it(explorer):
    canvas_event(explorer, "motion_notify_event", 9)._process()
    assert explorer.hovered == 9
    assert "hover: <b>point 9</b> &middot; class: 1 (x)" in explorer.status.value
    assert explorer._hover_label.get_visible() and explorer._hover_label.get_text() == "9: 1 (x)"
    canvas_event(explorer, "motion_notify_event", at=(2, 2))._process()  # a corner of the figure, on no point
    assert explorer.hovered is None and explorer.status.value == HOVER_HINT
    assert not explorer._hover_label.get_visible()
    assert explorer.state.selected == 0  # hovering selects nothing


def test_widget_controls_call_the_update_methods(explorer, data):
    assert explorer.widget.__class__.__name__ == "VBox"
    explorer.color_by_control.value = "color"
    explorer.projection_control.value = "epoch 5"
    explorer.point_control.value = 3
    assert (explorer.state.color_by, explorer.state.projection, explorer.state.selected) == ("color", "epoch 5", 3)
    np.testing.assert_allclose(explorer.last_xy, data.xy.numpy() * 3 + 1, rtol=1e-5)


# -- without images or labels, and bad input -------------------------------------------------------


def test_explorer_without_images_or_labels(data):
    explorer = EmbeddingExplorer({"only": data.xy})
    assert explorer.color_options == ["none"] and explorer.state.color_by == "none"
    assert explorer._ax.get_legend() is None
    assert explorer.last_image is None
    explorer.select_point(5)
    assert explorer.state.selected == 5
    assert "<img" not in explorer.panel.value and "another class" not in explorer.panel.value
    assert EmbeddingExplorer({"a": data.xy, "b": data.xy}).color_options == ["none", "new neighbours"]


def test_bad_choices_raise_and_list_valid_ones(explorer):
    with pytest.raises(ValueError, match=r"color_by must be one of \['class', 'color', 'kNN vote', 'new neighbours'\]"):
        explorer.set_color_by("size")
    with pytest.raises(ValueError, match=r"projection must be one of \['epoch 0', 'epoch 5'\]"):
        explorer.set_projection("epoch 9")
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 39\]"):
        explorer.select_point(N)
    with pytest.raises(ValueError, match=r"index must be an int in \[0, 39\]"):
        explorer.hover_point(-1)
    assert explorer.state.selected == 0  # unchanged


def test_explorer_rejects_bad_input(data):
    with pytest.raises(ValueError, match="non-empty dict"):
        EmbeddingExplorer({})
    with pytest.raises(ValueError, match="same N"):
        EmbeddingExplorer({"a": data.xy, "b": data.xy[:10]})
    with pytest.raises(ValueError, match="at least 2 points"):
        EmbeddingExplorer({"a": data.xy[:1]})
    with pytest.raises(ValueError, match=r"'size' must have shape \[N\] = \[40\]"):
        EmbeddingExplorer({"a": data.xy}, factors={"size": torch.zeros(3)})
    with pytest.raises(ValueError, match="a factor cannot be called 'kNN vote'"):
        EmbeddingExplorer({"a": data.xy}, factors={"kNN vote": torch.zeros(N)})
    with pytest.raises(ValueError, match="label_names has 2 names"):
        EmbeddingExplorer({"a": data.xy}, labels=data.labels, label_names=["p", "q"])
    with pytest.raises(ValueError, match="expected 40, got 10"):
        EmbeddingExplorer({"a": data.xy}, images=data.images[:10])
    with pytest.raises(ValueError, match=r"features must map each projection's name \['a'\] .* got names \['b'\]"):
        EmbeddingExplorer({"a": data.xy}, features={"b": data.features["epoch 0"]})
    with pytest.raises(ValueError, match=r"features\['a'\] must have shape \[N, D\] = \[40, D\], got \[39, 16\]"):
        EmbeddingExplorer({"a": data.xy}, features={"a": data.features["epoch 0"][:39]})
    with pytest.raises(ValueError, match=r"features\['a'\] contains NaN"):
        EmbeddingExplorer({"a": data.xy}, features={"a": torch.full((N, 3), float("nan"))})
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        EmbeddingExplorer({"a": data.xy}, k=0)
    assert EmbeddingExplorer({"a": data.xy[:4]}, k=8).k == 3  # at most the other points


def test_explore_embeddings_opens_what_clcourse_embed_wrote(tmp_path, monkeypatch):
    from clcourse.viz import explorer as explorer_module

    features = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    np.save(tmp_path / "run.npy", features)
    np.save(tmp_path / "run.labels.npy", np.arange(12) % 3)
    projected = []
    monkeypatch.setattr("clcourse.viz.projection.umap_2d",
                        lambda f, seed=0: projected.append(f) or np.asarray(f)[:, :2].copy())
    explorer = explorer_module.explore_embeddings(tmp_path / "run.npy")
    assert explorer.state.projection == "run" and explorer.state.color_by == "class"
    np.testing.assert_array_equal(projected[0], features)
    np.testing.assert_array_equal(explorer.last_xy, features[:, :2])
    np.testing.assert_array_equal(explorer.last_neighbours, nearest_neighbours(features, k=8).indices[0])


def test_a_fresh_process_keeps_its_matplotlib_backend_through_import_and_explorer():
    """Importing ipympl switches pyplot's backend; the explorer puts the notebook's back (figures stay inline)."""
    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt; import torch\n"
        "from clcourse.viz import embedding_explorer\n"
        "embedding_explorer({'a': torch.randn(20, 2)}, labels=torch.arange(20) % 3)\n"
        "print(matplotlib.get_backend())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"
