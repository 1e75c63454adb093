"""The course in a real browser: JupyterLab started the way `make lab` starts it, driven by Chromium through Playwright.

What it proves that the unit tests cannot: `make lab`'s command (`clcourse lab`) seeds a workspace and prints a
URL that opens lesson 00; a lesson runs top to bottom in JupyterLab; the temperature explorer renders, a keyboard
on its slider reaches the kernel's callback and the picture on screen changes; the embedding explorer's ipympl
canvas turns a mouse over a point and a click on it into the kernel's hover and pick handlers, which name the
point and show its neighbours; and running a lesson leaves the repository's `git status` as it was (the
learner's outputs go to the workspace).

One `python -m clcourse lab --no-browser` serves both tests, on a free localhost port with a throw-away
workspace and throw-away config/data/runtime/settings folders. The first test reads the URL it prints, opens it
and checks lesson 00 is the notebook on screen; then opens lesson 03 (the workspace's copy), runs all cells
(CLCOURSE_PROFILE=quick; about 1.5 minutes on 2 idle cores), scrolls to the explorer, presses ArrowRight five
times on the slider handle, waits for the exact final status text and compares the figure before and after.
The second runs lesson 06 (about 1.5 minutes), asks the kernel where a well-separated point of the embedding
explorer is drawn, moves the mouse there and waits for the status line to name it, clicks it and waits for
the panel with its image and its neighbours. Screenshots go to $CLCOURSE_BROWSER_ARTIFACTS or, by default,
to pytest's tmp_path; the path is printed (see it with pytest -s).

Needs Debian's Chromium (tests/install_browser.sh) and the playwright package; never
`playwright install` (it downloads a browser). Skips with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CLCOURSE_CHROMIUM", "/usr/bin/chromium"))
# Quiet and working as root on a closed network; Playwright adds --headless and its own user data dir.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTEBOOK = "03_ntxent_temperature.ipynb"
EMBEDDING_NOTEBOOK = "06_simclr.ipynb"
RUN_TIMEOUT_S = float(os.environ.get("CLCOURSE_BROWSER_RUN_TIMEOUT", "1500"))  # generous: a busy machine is slow
PRESSES = 5


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: run tests/install_browser.sh (Debian: apt-get install chromium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path) -> None:
    def write(plugin: str, values: dict) -> None:
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))

    write("@jupyterlab/apputils-extension/notification", {"fetchNews": "false"})  # no news pop-up over the page
    write("@jupyterlab/notebook-extension/tracker", {"windowingMode": "none"})  # every cell in the DOM


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`clcourse lab` (what `make lab` runs) on a throw-away workspace; yields (printed url, base url, token)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tmp_path = tmp_path_factory.mktemp("lab")
    env = dict(os.environ, CLCOURSE_PROFILE="quick", PYTHONUNBUFFERED="1")
    for var, name in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("IPYTHONDIR", "ipython"),
    ]:
        env[var] = str(tmp_path / name)
        (tmp_path / name).mkdir()
    _write_settings(tmp_path / "settings")
    for config in ("jupyter_server_config.json", "jupyter_lab_config.json"):  # the page's window.jupyterapp
        (tmp_path / "config" / config).write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))
    port = _free_port()
    command = [sys.executable, "-m", "clcourse", "lab", "--no-browser", f"--port={port}",
               f"--workspace={tmp_path / 'workspace'}"]
    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = _printed_url(server, log_path)
        token = url.split("token=")[1]
        base = f"http://127.0.0.1:{port}"
        _wait_until_ready(base, token, server, log_path)
        yield url, base, token
    finally:
        server.send_signal(signal.SIGTERM)  # also ends its kernels
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _printed_url(server: subprocess.Popen, log_path: Path, timeout: float = 60) -> str:
    """The URL `clcourse lab` printed before handing over to JupyterLab."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.strip().startswith("http://localhost:") and "token=" in line:
                return line.strip()
        if server.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"clcourse lab printed no URL within {timeout} s:\n{log_path.read_text()[-3000:]}")


def _git_status() -> str | None:
    """`git status --porcelain` of the checkout, or None outside a git checkout."""
    result = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def _wait_until_ready(base: str, token: str, server: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer /api/status within {timeout} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("CLCOURSE_BROWSER_ARTIFACTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {folder}")
    return folder


# JavaScript run in the page, against the app that --LabApp.expose_app_in_browser exposes.
CURRENT_NOTEBOOK = "(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; return w && w.context ? w.context.path : null; })()"
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle' && !!panel.content;
}"""
RUN_STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    const errors = [];
    cells.forEach((cell, i) => {
        const outputs = cell.model.outputs;
        for (let k = 0; k < outputs.length; k++) {
            const out = outputs.get(k).toJSON();
            if (out.output_type === 'error') errors.push(`code cell ${i}: ${out.ename}: ${out.evalue}`);
        }
    });
    return {
        executed: cells.filter(cell => cell.model.executionCount !== null).length,
        total: cells.length,
        errors: errors,
        idle: panel.sessionContext.session.kernel.status === 'idle',
    };
}"""
SCROLL_TO_CELL = """(text) => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    const index = notebook.widgets.findIndex(cell => cell.model.sharedModel.getSource().includes(text));
    if (index < 0) return false;
    notebook.activeCellIndex = index;
    notebook.widgets[index].node.scrollIntoView({block: 'start'});
    return true;
}"""
# Runs code in the current notebook's kernel, outside any cell, and returns what it printed (or its error).
KERNEL_PRINTS = """async (code) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute({code: code, store_history: false});
    let text = '';
    future.onIOPub = msg => {
        if (msg.header.msg_type === 'stream') text += msg.content.text;
        if (msg.header.msg_type === 'error') text += `${msg.content.ename}: ${msg.content.evalue}`;
    };
    await future.done;
    return text;
}"""
# In lesson 06's kernel: a point far from every other (one click can only mean it), not the selected one, and
# where its canvas draws it.
POINT_TO_CLICK = """
import json as _json
import numpy as _np
_xy = explorer.last_xy
_gap = _np.sqrt(((_xy[:, None] - _xy[None]) ** 2).sum(-1))
_np.fill_diagonal(_gap, _np.inf)
_gap = _gap.min(axis=1)
_gap[explorer.state.selected] = -1
_index = int(_gap.argmax())
print(_json.dumps([_index, *explorer.point_on_canvas(_index)]))
"""


def _run_all_cells(page) -> None:
    page.wait_for_function(KERNEL_IDLE, timeout=180_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = page.evaluate(RUN_STATE)
    time.sleep(3)  # let the first cell start before "idle" can mean "finished"
    idle_while_running = 0  # consecutive polls: the kernel status (what the status bar shows) says idle mid-run
    while time.monotonic() < deadline:
        state = page.evaluate(RUN_STATE)
        if state["errors"]:
            pytest.fail("the notebook raised in JupyterLab:\n" + "\n".join(state["errors"]))
        if state["executed"] == state["total"] and state["idle"]:
            return
        # Between two cells the kernel is idle for milliseconds; for three polls (6 s) in a row it is not, unless a
        # control-channel request's "idle" was taken as the kernel's (comms over subshells: clcourse lab turns
        # them off).
        idle_while_running = idle_while_running + 1 if state["idle"] else 0
        assert idle_while_running < 3, f"the status bar says Idle while cells still run: {state}"
        time.sleep(2)
    pytest.fail(f"the notebook did not finish within {RUN_TIMEOUT_S:.0f} s: {state}")


@contextlib.contextmanager
def _browser_page(artifacts: Path):
    """A Chromium page, 1280x1000; a screenshot of it goes to failure.png when the block raises."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            yield page
        except Exception:
            page.screenshot(path=str(artifacts / "failure.png"), full_page=False)
            raise
        finally:
            browser.close()


def _open_and_run(page, base: str, token: str, notebook: str) -> None:
    page.goto(f"{base}/lab/tree/lessons/{notebook}?token={token}", timeout=120_000)
    page.wait_for_function(CURRENT_NOTEBOOK + f" === 'lessons/{notebook}'", timeout=120_000)
    _run_all_cells(page)


def test_temperature_slider_redraws_the_explorer(lab, artifacts):
    from playwright.sync_api import expect

    from clcourse.viz.temperature import DEFAULT_TEMPERATURES, nearest_temperature, status_text

    url, base, token = lab
    status_before = _git_status()
    trained = (0.05, 0.1, 0.3, 1.0)  # what the lesson trains
    start = 0.1  # the explorer's first temperature
    final = DEFAULT_TEMPERATURES[DEFAULT_TEMPERATURES.index(start) + PRESSES]
    first_text, final_text = status_text(start, start), status_text(final, nearest_temperature(final, trained))

    with _browser_page(artifacts) as page:
        page.goto(url, timeout=120_000)  # the URL make lab prints opens lesson 00
        page.wait_for_function(CURRENT_NOTEBOOK + " === 'lessons/00_welcome.ipynb'", timeout=120_000)
        expect(page.get_by_role("heading", name="Lesson 00").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(artifacts / "lesson_00.png"))

        _open_and_run(page, base, token, NOTEBOOK)
        assert page.evaluate(SCROLL_TO_CELL, "TemperatureExplorer(results"), "no cell builds the TemperatureExplorer"

        slider = page.locator(".widget-hslider").filter(
            has=page.locator(".widget-label", has_text="temperature")
        )
        expect(slider).to_have_count(1)
        explorer = page.locator(".widget-vbox").filter(has=slider).last
        status = explorer.get_by_text("drawn: temperature")
        picture = explorer.locator(".jp-OutputArea-output img")
        explorer.scroll_into_view_if_needed()
        expect(status).to_have_text(first_text, timeout=60_000)
        expect(picture).to_have_count(1)
        src_before = picture.get_attribute("src")
        explorer.screenshot(path=str(artifacts / "explorer_before.png"))

        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(PRESSES):
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(150)
        expect(status).to_have_text(final_text, timeout=120_000)  # exact text: not just "changed"
        expect(slider.locator(".widget-readout")).to_have_text(f"{final:g}")
        explorer.scroll_into_view_if_needed()
        src_after = picture.get_attribute("src")
        explorer.screenshot(path=str(artifacts / "explorer_after.png"))

    assert src_before and src_before.startswith("data:image/png")
    assert src_after != src_before, "the explorer's picture did not change after the slider moved"
    before = (artifacts / "explorer_before.png").read_bytes()
    after = (artifacts / "explorer_after.png").read_bytes()
    assert before != after, "the screenshots before and after the slider moved are identical"
    assert _git_status() == status_before, "running a lesson changed the repository (its outputs belong in the workspace)"


def test_embedding_explorer_names_a_hovered_point_and_shows_a_clicked_ones_neighbours(lab, artifacts):
    from playwright.sync_api import expect

    from clcourse.viz.explorer import PANEL_CLASS

    _, base, token = lab
    status_before = _git_status()
    with _browser_page(artifacts) as page:
        _open_and_run(page, base, token, EMBEDDING_NOTEBOOK)
        assert page.evaluate(SCROLL_TO_CELL, "embedding_explorer("), "no cell builds the embedding explorer"

        explorer = page.locator(".widget-vbox").filter(has=page.locator(".jupyter-matplotlib")).last
        # ipympl stacks two canvases; the top one takes the mouse, and its pixels are the figure's (device ratio 1)
        canvas = explorer.locator(".jupyter-matplotlib-canvas-div canvas").last
        panel = explorer.locator(f".{PANEL_CLASS}")
        explorer.scroll_into_view_if_needed()
        expect(canvas).to_be_visible(timeout=60_000)
        expect(panel).to_contain_text("point 0")
        printed = page.evaluate(KERNEL_PRINTS, POINT_TO_CLICK)
        index, x, y = json.loads(printed)  # a JSONDecodeError here shows what the kernel said instead
        explorer.screenshot(path=str(artifacts / "embedding_before.png"))

        canvas.hover(position={"x": x, "y": y})
        expect(explorer).to_contain_text(f"hover: point {index} ·", timeout=60_000)
        canvas.click(position={"x": x, "y": y})
        expect(panel.get_by_text(f"point {index}", exact=True)).to_be_visible(timeout=60_000)
        expect(panel.locator("img")).to_have_count(1 + 8)  # the point and its 8 neighbours
        expect(explorer.locator(".widget-text input")).to_have_value(str(index))  # the point box follows
        page.wait_for_timeout(1000)  # the canvas redraws (selection rings) after the kernel answers
        explorer.screenshot(path=str(artifacts / "embedding_after.png"))

    assert _git_status() == status_before, "running a lesson changed the repository (its outputs belong in the workspace)"
