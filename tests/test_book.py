"""The course website (`make book`, book/build.py): its syllabus, and a small site checked in a real browser.

The unit tests (no browser, well under a second) check what the table of contents holds and in which order,
that the solutions in exercises/source/ are never published, and how a widget's saved state becomes static
HTML. The browser test builds a SMALL book with the same builder `make book` uses (a fixture lesson made
here, executed during the build: an equation and a matplotlib figure; plus one real student exercise, not
executed; it never runs the course's lessons), serves it from 127.0.0.1 and opens the lesson and the
exercise in Debian's Chromium through Playwright: the figure has loaded, MathJax typeset the equation from
the site's own copy, the exercise shows no solution, and no request left 127.0.0.1. About 15 s.

Needs Debian's Chromium (tests/install_browser.sh), the playwright and jupyter-book packages and MathJax's npm
tarball (downloaded once into build/mathjax/); never `playwright install`. Skips with the reason when one is
missing.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_browser import (  # Debian's Chromium and its flags, shared with that test
    CHROMIUM,
    CHROMIUM_ARGS,
)

from book.build import (
    WIDGET_STATE,
    WIDGET_VIEW,
    BookError,
    audit_site,
    build_book,
    check_no_solutions,
    discover,
    fetch_mathjax,
    make_toc,
    pages,
    static_widgets,
)

EQUATION = r"\mathcal{L} = -\log \frac{e^{s/\tau}}{\sum_k e^{s_k/\tau}}"
EXERCISE = "03_ntxent.ipynb"


def _skip_reason() -> str | None:
    try:
        import jupyter_book  # noqa: F401
    except ImportError:
        return "jupyter-book is not installed (pip install -e '.[book]', or make book once)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: run tests/install_browser.sh (Debian: apt-get install chromium)"
    return None


def _notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    notebook = {
        "cells": [{"id": f"cell-{i}", "cell_type": kind, "metadata": {}, "source": source,
                   **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                  for i, (kind, source) in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook))
    return path


# --------------------------------------------------------------------------------------------------
# The syllabus, without a browser


def test_toc_lists_the_lessons_in_order_then_the_student_exercises(tmp_path):
    for name in ("11_supcon", "00_welcome", "03_ntxent_temperature", "03_ntxent_temperature.new", "scratch"):
        _notebook(tmp_path / "notebooks" / f"{name}.ipynb", [("markdown", f"# Lesson {name[:2]}: {name}")])
    for name in ("11_supcon", "03_ntxent"):
        _notebook(tmp_path / "exercises" / f"{name}.ipynb", [("markdown", f"# Exercises {name[:2]}: x")])
        _notebook(tmp_path / "exercises" / "source" / f"{name}.ipynb", [("code", "### BEGIN SOLUTION")])

    lessons, exercises = discover(tmp_path / "notebooks"), discover(tmp_path / "exercises")
    assert [p.name for p in lessons] == ["00_welcome.ipynb", "03_ntxent_temperature.ipynb", "11_supcon.ipynb"]
    assert [p.name for p in exercises] == ["03_ntxent.ipynb", "11_supcon.ipynb"]
    assert all("source" not in p.parts for p in exercises)

    toc = make_toc(*pages(lessons, exercises))
    assert toc["format"] == "jb-book" and toc["root"] == "intro"
    assert [part["caption"] for part in toc["parts"]] == ["Lessons", "Exercises"]
    assert [c["file"] for c in toc["parts"][0]["chapters"]] == [
        "lessons/00_welcome", "lessons/03_ntxent_temperature", "lessons/11_supcon"]
    assert [c["file"] for c in toc["parts"][1]["chapters"]] == ["exercises/03_ntxent", "exercises/11_supcon"]
    assert pages(lessons, exercises)[0][1].title == "Lesson 03: 03_ntxent_temperature"


def test_toc_of_the_repository_holds_every_lesson_and_no_solution():
    lessons, exercises = discover(REPO / "notebooks"), discover(REPO / "exercises")
    on_disk = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if ".new." not in p.name)
    assert [p.name for p in lessons] == on_disk and on_disk
    assert exercises and all(p.parent == REPO / "exercises" for p in exercises)
    check_no_solutions(exercises)  # the student versions carry no solution markers
    with pytest.raises(BookError, match="source"):
        check_no_solutions(discover(REPO / "exercises" / "source")[:1])
    files = [c["file"] for part in make_toc(*pages(lessons, exercises))["parts"] for c in part["chapters"]]
    assert files == [f"lessons/{p.stem}" for p in lessons] + [f"exercises/{p.stem}" for p in exercises]


def test_widget_state_becomes_static_html_and_pictures():
    png = base64.b64encode(b"\x89PNG fake").decode()

    def model(name, **state):
        return {"model_name": f"{name}Model", "model_module": "@jupyter-widgets/controls",
                "model_module_version": "2.0.0", "state": {"_model_name": f"{name}Model", **state}}

    state = {
        "slider": model("SelectionSlider", description="temperature", _options_labels=["0.1", "0.5"], index=1),
        "label": model("Label", value="drawn: temperature 0.5"),
        "row": model("HBox", children=["IPY_MODEL_slider", "IPY_MODEL_label"]),
        "out": model("Output", outputs=[{"output_type": "display_data", "metadata": {},
                                         "data": {"image/png": png, "text/plain": "<Figure>"}}]),
        "root": model("VBox", children=["IPY_MODEL_row", "IPY_MODEL_out"]),
        "canvas": model("MPLCanvas", _data_url=f"data:image/png;base64,{png}"),  # ipympl's live figure
        "undrawn": model("MPLCanvas", _data_url=None),  # never drawn: no front end asked for a frame
        "app": model("VBox", children=["IPY_MODEL_canvas", "IPY_MODEL_undrawn"]),
    }
    ipympl_figure = {"output_type": "display_data", "metadata": {},
                     "data": {"text/plain": "Canvas(...)", "image/png": png, "text/html": "<img src='data:...'>",
                              WIDGET_VIEW: {"model_id": "canvas"}}}
    notebook = {"cells": [{"cell_type": "code", "source": "explorer", "metadata": {}, "execution_count": 1,
                           "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                        "data": {"text/plain": "VBox(...)", WIDGET_VIEW: {"model_id": "root"}}},
                                       {"output_type": "display_data", "metadata": {},
                                        "data": {"text/plain": "gone", WIDGET_VIEW: {"model_id": "closed"}}},
                                       ipympl_figure,
                                       {"output_type": "display_data", "metadata": {},
                                        "data": {"text/plain": "VBox", WIDGET_VIEW: {"model_id": "app"}}}]}],
                "metadata": {"widgets": {WIDGET_STATE: {"state": state}}}}
    assert static_widgets(notebook) == 4
    outputs = notebook["cells"][0]["outputs"]
    assert "widgets" not in notebook["metadata"]
    assert all(WIDGET_VIEW not in o["data"] for o in outputs)
    controls, picture, missing, figure, canvas, undrawn = outputs
    assert set(figure["data"]) == {"image/png", "text/plain"}  # the figure's own PNG, not its HTML
    assert canvas["data"]["image/png"] == png
    assert "live matplotlib figure" in undrawn["data"]["text/html"]
    assert "temperature: " in controls["data"]["text/html"] and ">0.5<" in controls["data"]["text/html"]
    assert "drawn: temperature 0.5" in controls["data"]["text/html"] and "make lab" in controls["data"]["text/html"]
    assert picture["data"]["image/png"] == png
    assert "needs a running kernel" in missing["data"]["text/html"]


def test_audit_finds_loads_from_other_hosts_but_not_local_files(tmp_path):
    (tmp_path / "a.html").write_text(
        '<link rel="stylesheet" href="_static/x.css"><script src="_static/y.js"></script>'
        '<link rel="canonical" href="https://example.org/a.html"><a href="https://example.org">out</a>'
        '<img src="data:image/png;base64,AAAA"><script src="https://cdn.example.org/z.js"></script>')
    (tmp_path / "b.css").write_text("@font-face { src: url(//fonts.example.org/f.woff2) } .x { background: url(a.png) }")
    loads, links = audit_site(tmp_path)
    assert loads == ["a.html: <script> https://cdn.example.org/z.js", "b.css: url(//fonts.example.org/f.woff2)"]
    assert links == ["a.html: https://example.org"]


# --------------------------------------------------------------------------------------------------
# A small site in a real browser


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def small_book(tmp_path):
    """A book of one fixture lesson (executed by the build) and one student exercise; yields the site folder."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        fetch_mathjax(REPO / "build" / "mathjax")
    except BookError as error:
        pytest.skip(f"MathJax is not available offline: {error}")
    lesson = _notebook(tmp_path / "notebooks" / "42_fixture.ipynb", [
        ("markdown", ("# Lesson 42: A fixture lesson\n\nNT-Xent in one line:\n\n"
                      f"$$\n{EQUATION}\n$$\n\nwith the temperature $\\tau$.")),
        ("code", ("import matplotlib.pyplot as plt\n\n"
                  "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([0, 1, 2, 3], [3, 1, 2, 0], marker='o')\n"
                  "ax.set_title('fixture figure')\nplt.show()")),
    ])
    exercise = REPO / "exercises" / EXERCISE
    if not exercise.is_file():
        exercise = discover(REPO / "exercises")[0]
    site = tmp_path / "site"
    build_book([lesson], [exercise], site, execute=True, work_dir=tmp_path / "work",
               readme=REPO / "README.md")
    return site, exercise


@pytest.fixture
def served(small_book):
    site, exercise = small_book
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", site, exercise
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("CLCOURSE_BROWSER_ARTIFACTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbook test screenshots: {folder}")
    return folder


MATH_STATE = """() => ({
    containers: document.querySelectorAll('mjx-container').length,
    errors: document.querySelectorAll('mjx-merror').length,
    text: document.querySelector('article').innerText,
})"""
MATH_FONTS = """async () => {
    await document.fonts.ready;
    return [...document.fonts].filter(f => f.family.startsWith('MJX') && f.status === 'loaded').length;
}"""
FIGURE = """() => [...document.querySelectorAll('article .cell_output img')].map(
    img => ({src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth}))"""


@pytest.mark.browser
@pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")  # Sphinx's gc scan
def test_small_book_in_chromium_shows_figure_math_and_no_solution(served, artifacts):
    from playwright.sync_api import sync_playwright

    base, site, exercise = served
    host = urlparse(base).netloc
    requests, outside, page_errors = [], [], []

    def route(route):  # record every request; anything not served by 127.0.0.1 is refused, not fetched
        url = route.request.url
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob", "about") or parsed.netloc == host:
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.route("**/*", route)
        page = context.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        try:
            page.goto(f"{base}/lessons/42_fixture.html", wait_until="load", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=30_000)
            math = page.evaluate(MATH_STATE)
            fonts = page.evaluate(MATH_FONTS)
            page.wait_for_function("() => [...document.querySelectorAll('article .cell_output img')]"
                                   ".every(img => img.complete)", timeout=30_000)
            figures = page.evaluate(FIGURE)
            page.screenshot(path=str(artifacts / "book_lesson.png"), full_page=True)

            page.goto(f"{base}/exercises/{exercise.stem}.html", wait_until="load", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=30_000)
            exercise_text = page.evaluate("() => document.querySelector('article').innerText")
            exercise_outputs = page.locator("article .cell_output").count()
            page.screenshot(path=str(artifacts / "book_exercise.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(artifacts / "failure.png"))
            raise
        finally:
            browser.close()

    assert "Lesson 42: A fixture lesson" in math["text"]
    assert math["containers"] >= 2 and math["errors"] == 0, math  # the display equation and the inline tau
    assert "$$" not in math["text"] and "\\mathcal" not in math["text"], "MathJax left raw TeX on the page"
    assert fonts > 0, "MathJax's web fonts did not load from the site"
    assert any("/_static/mathjax/output/chtml/fonts/" in url for url in requests)
    assert len(figures) == 1 and figures[0]["width"] > 0, f"the figure did not load: {figures}"
    assert not figures[0]["src"].startswith("http") or urlparse(figures[0]["src"]).netloc == host

    assert "Exercises" in exercise_text and "NotImplementedError" in exercise_text
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in exercise_text, f"the exercise page shows {marker!r}"
    assert exercise_outputs == 0, "the exercise was executed (it should be published as the learner gets it)"
    assert not any(marker in path.read_text(errors="replace") for path in site.rglob("*.html")
                   for marker in ("BEGIN SOLUTION", "HIDDEN TESTS"))

    assert not outside, "pages requested other hosts:\n" + "\n".join(sorted(set(outside)))
    assert not page_errors, f"JavaScript errors: {page_errors}"
