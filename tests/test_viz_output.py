import contextlib

import matplotlib.pyplot as plt

from clcourse.viz import output


def test_figure_png_renders_png_bytes():
    figure = plt.figure(figsize=(1, 1))
    assert output.figure_png(figure).startswith(b"\x89PNG")
    plt.close(figure)


def test_nothing_is_rendered_outside_ipython(monkeypatch):
    monkeypatch.setattr(output, "figure_png", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rendered")))
    output.show_figure(contextlib.nullcontext(), plt.figure())  # a script: no notebook to show it in
    output.show_png(contextlib.nullcontext(), b"\x89PNG")


def test_inside_ipython_the_output_is_replaced_by_the_picture(monkeypatch):
    shown = []
    monkeypatch.setattr(output, "get_ipython", lambda: object())
    monkeypatch.setattr(output, "clear_output", lambda wait: shown.append(("clear", wait)))
    monkeypatch.setattr(output, "display", lambda image: shown.append(("display", image.data[:4])))
    figure = plt.figure(figsize=(1, 1))
    output.show_figure(contextlib.nullcontext(), figure, dpi=20)
    assert shown == [("clear", True), ("display", b"\x89PNG")]
    plt.close(figure)
