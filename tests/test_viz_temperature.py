"""Tests of the temperature explorer: its maths, its update method and its widgets (callbacks called directly)."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clcourse.viz.temperature import (  # noqa: E402
    DEFAULT_TEMPERATURES,
    SLIDER_LABEL,
    TemperatureExplorer,
    TemperatureResult,
    nearest_temperature,
    softmax_weights,
    status_text,
)

TRAINED = (0.05, 0.1, 0.3, 1.0)


def fake_results(n=40, temperatures=TRAINED, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    results = []
    for i, t in enumerate(temperatures):
        angles = labels * 1.5 + rng.normal(0, 0.1 + 0.2 * i, n)
        results.append(TemperatureResult(
            temperature=t, labels=labels, umap=rng.normal(size=(n, 2)) + 3 * labels[:, None],
            circle=np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0,  # not unit: the explorer normalises
            alignment=0.2 + 0.1 * i, uniformity=-3.0 + 0.5 * i, tolerance=0.3 + 0.1 * i,
            linear_probe=0.9 - 0.01 * i, knn=0.95 - 0.02 * i,
        ))
    return results


@pytest.fixture
def explorer():
    return TemperatureExplorer(fake_results(), label_names=["a", "b", "c", "d"])


# -- the maths ------------------------------------------------------------------------------------


def test_softmax_weights_is_a_softmax_of_similarity_over_temperature():
    sims = [0.8, -0.5, 0.2, 0.9]
    for t in (0.05, 0.5, 2.0):
        expected = torch.softmax(torch.tensor(sims, dtype=torch.float64) / t, dim=0).numpy()
        np.testing.assert_allclose(softmax_weights(sims, t), expected, rtol=1e-12)
    assert softmax_weights(sims, 0.5).sum() == pytest.approx(1.0)


def test_small_temperature_concentrates_large_temperature_flattens():
    sims = np.linspace(-1, 1, 9)
    sharp, flat = softmax_weights(sims, 0.01), softmax_weights(sims, 100.0)
    assert sharp[-1] > 0.999  # all weight on the most similar candidate
    np.testing.assert_allclose(flat, 1 / 9, rtol=0.03)
    assert np.all(np.diff(softmax_weights(sims, 0.3)) > 0)  # more similar, more weight
    assert np.isfinite(softmax_weights(sims, 1e-4)).all()  # no overflow at tiny temperatures


@pytest.mark.parametrize("sims, t, error, message", [
    ([], 0.1, ValueError, "non-empty"),
    ([[0.1, 0.2]], 0.1, ValueError, "1-D"),
    ([0.1], 0.0, ValueError, "> 0"),
    ([0.1], -1.0, ValueError, "> 0"),
    ([0.1], float("nan"), ValueError, "> 0"),
    ([0.1], True, TypeError, "number"),
])
def test_softmax_weights_rejects_bad_input(sims, t, error, message):
    with pytest.raises(error, match=message):
        softmax_weights(sims, t)


def test_nearest_temperature_is_nearest_on_a_log_scale():
    assert nearest_temperature(0.2, TRAINED) == 0.3  # |log 0.2 - log 0.3| < |log 0.2 - log 0.1|
    assert nearest_temperature(0.15, TRAINED) == 0.1
    assert nearest_temperature(0.07, TRAINED) == 0.05
    assert nearest_temperature(0.7, TRAINED) == 1.0
    assert nearest_temperature(5.0, TRAINED) == 1.0
    assert nearest_temperature(0.1, TRAINED) == 0.1
    with pytest.raises(ValueError, match="at least one"):
        nearest_temperature(0.1, [])


def test_status_text_names_both_temperatures():
    assert status_text(0.7, 1.0) == "drawn: temperature 0.7 | trained encoder: 1"


# -- the explorer ---------------------------------------------------------------------------------


def test_explorer_starts_at_0_1_with_every_panel_drawn(explorer):
    assert explorer.slider.description == SLIDER_LABEL
    assert explorer.slider.value == 0.1 and explorer.temperature == 0.1 and explorer.trained == 0.1
    assert explorer.status.value == status_text(0.1, 0.1)
    assert explorer.png.startswith(b"\x89PNG")
    assert len(explorer.figure.axes) == 7  # six panels, plus the twin axis of (d)
    assert [t for t in DEFAULT_TEMPERATURES if t in explorer.temperatures] == list(DEFAULT_TEMPERATURES)
    assert explorer.widget.children[1] is explorer.output


def test_set_temperature_redraws_both_parts(explorer):
    before = explorer.png
    explorer.set_temperature(0.7)
    assert explorer.temperature == 0.7 and explorer.trained == 1.0  # (b) snaps to the nearest trained
    assert explorer.slider.value == 0.7
    assert explorer.status.value == status_text(0.7, 1.0)
    assert explorer.png != before
    candidates = explorer.similarities
    np.testing.assert_allclose(explorer.last_weights, softmax_weights(candidates, 0.7))
    umap_axes = explorer.figure.axes[1]
    trained_result = explorer.results[explorer.trained_temperatures.index(1.0)]
    np.testing.assert_allclose(umap_axes.collections[0].get_offsets(), trained_result.umap)


def test_panel_a_follows_the_slider_between_trained_temperatures(explorer):
    explorer.set_temperature(0.05)
    at_005 = explorer.png, explorer.last_weights
    explorer.set_temperature(0.07)  # same trained encoder (0.05), different maths
    assert explorer.trained == 0.05
    assert explorer.png != at_005[0]
    assert explorer.last_weights.max() < at_005[1].max()  # a warmer softmax is flatter


def test_status_changes_only_after_the_figure_is_redrawn(explorer, monkeypatch):
    seen = []

    def show():  # called once the new PNG is rendered, before the status may change
        seen.append((explorer.status.value, explorer.png))

    monkeypatch.setattr(explorer, "_show", show)
    old_status, old_png = explorer.status.value, explorer.png
    explorer.set_temperature(0.3)
    (status_at_show, png_at_show), = seen
    assert status_at_show == old_status  # still describing the old picture while the new one goes out
    assert png_at_show != old_png and png_at_show == explorer.png
    assert explorer.status.value == status_text(0.3, 0.3)


def test_slider_calls_set_temperature_and_its_echo_does_not_redraw(explorer, monkeypatch):
    explorer.slider.value = 0.3  # what a user's drag does
    assert explorer.temperature == 0.3 and explorer.status.value == status_text(0.3, 0.3)
    redraws = []
    monkeypatch.setattr(explorer, "_redraw", lambda t: redraws.append(t))
    explorer.set_temperature(0.3)  # nothing to do
    explorer.slider.value = 0.3
    assert redraws == []


def test_circle_panel_draws_unit_vectors(explorer):
    circle_axes = explorer.figure.axes[2]
    points = circle_axes.collections[0].get_offsets()
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, rtol=1e-9)


def test_custom_stops_include_the_trained_temperatures():
    explorer = TemperatureExplorer(fake_results(), temperatures=[0.2, 0.5], start=0.2)
    assert explorer.temperatures == [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    assert explorer.status.value == status_text(0.2, 0.3)


@pytest.mark.parametrize("value, error, message", [
    (0.12, ValueError, "one of the slider's stops"),
    (-1.0, ValueError, "one of the slider's stops"),
    (True, TypeError, "number"),
    ("0.1", TypeError, "number"),
])
def test_set_temperature_rejects_values_off_the_slider(explorer, value, error, message):
    with pytest.raises(error, match=message):
        explorer.set_temperature(value)
    assert explorer.temperature == 0.1  # nothing changed


def test_explorer_rejects_bad_results():
    good = fake_results()
    with pytest.raises(ValueError, match="non-empty"):
        TemperatureExplorer([])
    with pytest.raises(ValueError, match="distinct temperatures"):
        TemperatureExplorer([good[0], good[0]])
    short = fake_results(n=30)[1]
    with pytest.raises(ValueError, match="same images"):
        TemperatureExplorer([good[0], TemperatureResult(**{**short.__dict__, "labels": short.labels + 1})])
    bad_circle = TemperatureResult(**{**good[1].__dict__, "circle": good[1].circle[:-1]})
    with pytest.raises(ValueError, match="same N"):
        TemperatureExplorer([good[0], bad_circle])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        TemperatureExplorer([TemperatureResult(**{**good[0].__dict__, "umap": np.zeros((40, 3))})])
    with pytest.raises(ValueError, match="cosine similarities"):
        TemperatureExplorer(good, positive=1.5)


def test_explorer_accepts_tensors_and_leaves_the_results_untouched():
    results = fake_results()
    original = results[0].umap.copy()
    as_tensors = [TemperatureResult(**{**r.__dict__, "umap": torch.from_numpy(r.umap).float(),
                                       "labels": torch.from_numpy(r.labels)}) for r in results]
    explorer = TemperatureExplorer(as_tensors)
    assert isinstance(explorer.results[0].umap, np.ndarray)
    np.testing.assert_array_equal(results[0].umap, original)
    assert math.isclose(explorer.trained, 0.1)
