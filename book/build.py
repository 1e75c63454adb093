"""Build the course as a static website: the lessons with their executed outputs, then the exercises.

``make book`` runs ``python -m book.build``, which

1. finds the lessons (``notebooks/NN_*.ipynb``) and the exercises (``exercises/NN_*.ipynb``, the student
   versions; never ``exercises/source/``, which holds the solutions) in file-name order, so a new lesson
   appears in the syllabus without editing anything here;
2. executes each lesson with nbclient in the ``quick`` profile (``CLCOURSE_PROFILE=quick``), caching the
   executed notebook under the work folder by a hash of the notebook, the profile and the ``clcourse``
   package, so an unchanged lesson is not run twice; ``--executed DIR`` takes already-executed copies
   instead. Exercises are never executed (they raise ``NotImplementedError`` by design);
3. replaces every ipywidgets output with a static rendering of the state the widget was left in (its
   picture, its text, the values of its controls), since the live widgets need a kernel and their
   JavaScript would come from a CDN;
4. writes a Jupyter Book 1.x project (``_config.yml`` from ``book/_config.template.yml``, ``_toc.yml``,
   an ``intro.md`` made from README.md's description and syllabus) and builds it with Sphinx into
   ``build/book/`` (``build/book/index.html``);
5. serves MathJax 3 from the site itself: the npm tarball, checked against the registry's integrity
   hash and a pinned one, is cached in ``build/mathjax/`` and unpacked into ``_static/mathjax/``;
6. audits the result: a page that loads anything (script, style sheet, font, image) from another host
   fails the build, and so does an exercise notebook carrying solution markers.

The build is offline once MathJax is cached; without the cache and without a network it stops and says
which file it expected where.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONFIG_TEMPLATE = HERE / "_config.template.yml"
STATIC = HERE / "static"

LESSON_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")  # NN_topic.ipynb; not NN_topic.new.ipynb
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS")

MATHJAX_VERSION = "3.2.2"
# dist.integrity and dist.shasum of mathjax@3.2.2 on https://registry.npmjs.org (pinned: a tarball from a
# cache, a mirror or a USB stick is held to the same hash as a fresh download).
MATHJAX_INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
MATHJAX_SHASUM = "c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b"
MATHJAX_ENTRY = "tex-mml-chtml.js"
# What tex-mml-chtml.js loads at run time, below package/es5/: its fonts, the TeX extensions `autoload`
# pulls in, and the menu's accessibility parts. The other combined bundles and the SVG output are left out.
MATHJAX_KEEP = ("input/", "output/chtml/", "output/chtml.js", "ui/", "a11y/", "sre/", "adaptors/")

SLOW_CELL_S = 30  # a lesson's cell that runs longer is named in the build's log

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


class BookError(RuntimeError):
    """A build that cannot go on; the message says what was expected and how to fix it."""


# --------------------------------------------------------------------------------------------------
# The syllabus: which notebooks, in which order, under which titles


@dataclass(frozen=True)
class Page:
    """One notebook of the site: its source, its path in the book (no suffix) and its title."""

    source: Path
    docname: str
    title: str


def discover(folder: Path) -> list[Path]:
    """The ``NN_topic.ipynb`` notebooks directly in ``folder``, in file-name (= syllabus) order.

    Sub-folders (``exercises/source/``), checkpoints and ``NN_topic.new.ipynb`` copies are not included;
    a missing folder gives an empty list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and LESSON_PATTERN.match(p.name))


def notebook_title(path: Path) -> str:
    """The notebook's first Markdown heading (``# Lesson 03: ...``), or its file name without the suffix."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        for line in source.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return Path(path).stem


def pages(lessons: Iterable[Path], exercises: Iterable[Path]) -> tuple[list[Page], list[Page]]:
    """The lessons as ``lessons/<stem>`` and the exercises as ``exercises/<stem>`` pages, order kept."""
    return ([Page(Path(p), f"lessons/{Path(p).stem}", notebook_title(p)) for p in lessons],
            [Page(Path(p), f"exercises/{Path(p).stem}", notebook_title(p)) for p in exercises])


def make_toc(lessons: Sequence[Page], exercises: Sequence[Page]) -> dict:
    """The book's ``_toc.yml``: the intro page, then a "Lessons" part and an "Exercises" part."""
    parts = []
    if lessons:
        parts.append({"caption": "Lessons", "chapters": [{"file": p.docname} for p in lessons]})
    if exercises:
        parts.append({"caption": "Exercises", "chapters": [{"file": p.docname} for p in exercises]})
    toc: dict = {"format": "jb-book", "root": "intro"}
    if parts:
        toc["parts"] = parts
    return toc


def make_config(title: str, template: Path = CONFIG_TEMPLATE) -> dict:
    """The book's ``_config.yml``: ``book/_config.template.yml`` with the title filled in."""
    config = yaml.safe_load(Path(template).read_text(encoding="utf-8"))
    config["title"] = title
    return config


def check_no_solutions(exercises: Iterable[Path]) -> None:
    """Refuse to publish an exercise from a ``source`` folder or one that carries solution markers."""
    for path in exercises:
        path = Path(path)
        if "source" in path.resolve().parts[-3:-1]:
            raise BookError(f"{path} is in a source folder: the solutions are never published "
                            "(use the student notebooks in exercises/)")
        text = path.read_text(encoding="utf-8")
        for marker in SOLUTION_MARKERS:
            if marker in text:
                raise BookError(f"{path} contains {marker!r}: it is a solution notebook, not a student version "
                                "(clcourse exercises build writes the student notebooks)")


# --------------------------------------------------------------------------------------------------
# The intro page, from README.md


def readme_parts(readme: Path) -> tuple[str, str, dict[str, tuple[str, str]]]:
    """From README.md: its title, its description (the text before the first ``##`` section) and the
    syllabus table's rows as ``{"03_ntxent_temperature": (link text, what you do)}``."""
    text = Path(readme).read_text(encoding="utf-8") if Path(readme).is_file() else ""
    lines = text.splitlines()
    title, description, rows = "Contrastive learning, hands on", [], {}
    start = 0
    for i, line in enumerate(lines):
        if line.startswith("# "):
            title, start = line[2:].strip(), i + 1
            break
    for line in lines[start:]:
        if line.startswith("## "):
            break
        description.append(line)
    row = re.compile(r"^\|\s*\d+\s*\|\s*\[([^\]]+)\]\(notebooks/([^)/]+)\.ipynb\)\s*\|\s*(.*?)\s*\|\s*$")
    for line in lines:
        match = row.match(line)
        if match:
            rows[match.group(2)] = (match.group(1), match.group(3))
    return title, "\n".join(description).strip(), rows


def _unlink(markdown: str) -> str:
    """README's links point into the repository, where the site cannot follow: keep their text only."""
    return re.sub(r"\[([^\]]+)\]\((?![a-z]+://)[^)\s]+\)", r"\1", markdown)


def _short_title(page: Page) -> str:
    return re.sub(r"^(Lesson|Exercises)\s+\d+\s*:\s*", "", page.title)


def intro_markdown(readme: Path, lessons: Sequence[Page], exercises: Sequence[Page], executed: bool,
                   profile: str = "quick") -> str:
    """The site's first page: README's title and description, how to read the site, and the syllabus
    as a table linking every lesson and its exercises."""
    title, description, rows = readme_parts(readme)
    by_number = {p.source.name[:2]: p for p in exercises}
    out = [f"# {title}", ""]
    if description:
        out += [_unlink(description), ""]
    if executed:
        seen = (f"every lesson with the outputs and figures it produced when it ran in the `{profile}` "
                "profile")
        if profile == "quick":
            seen += " (small data and models on a CPU, about two minutes a lesson)"
    else:
        seen = "every lesson as text and code (this build did not execute them)"
    out += [
        "## This website",
        "",
        (f"This is the course as a book to read: {seen}, then the exercise notebooks as a learner receives "
         "them, without solutions. The interactive widgets appear as the picture and the settings the lesson "
         "left them in. To run the lessons, move the widgets and get your exercises graded, run `make lab` "
         "in a copy of the course (see its README)."),
        "",
    ]
    if lessons:
        out += ["## Syllabus", "", "| # | lesson | what you do | exercises |", "| --- | --- | --- | --- |"]
        for page in lessons:
            number = page.source.name[:2]
            link_text, what = rows.get(page.source.stem, (_short_title(page), ""))
            exercise = by_number.get(number)
            exercise_link = f"{{doc}}`exercises {number} <{exercise.docname}>`" if exercise else ""
            out.append(f"| {number} | {{doc}}`{link_text} <{page.docname}>` | {_unlink(what)} | {exercise_link} |")
        out.append("")
    orphans = [p for p in exercises if p.source.name[:2] not in {q.source.name[:2] for q in lessons}]
    if orphans:
        out += ["Further exercises: " + ", ".join(f"{{doc}}`{p.docname}`" for p in orphans) + ".", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# MathJax 3 from the npm registry, verified and cached


def _registry() -> str:
    return (os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
            or "https://registry.npmjs.org").rstrip("/")


def _verify_tarball(data: bytes, integrity: str = MATHJAX_INTEGRITY, shasum: str = MATHJAX_SHASUM) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise BookError(f"the MathJax tarball does not match its integrity hash {integrity} (got {algorithm}-{digest})")
    if hashlib.sha1(data).hexdigest() != shasum:
        raise BookError(f"the MathJax tarball does not match its shasum {shasum}")


def fetch_mathjax(cache_dir: Path, version: str = MATHJAX_VERSION, timeout: float = 60) -> Path:
    """The verified npm tarball of MathJax, ``cache_dir/mathjax-<version>.tgz``: from the cache when it is
    there and intact, otherwise downloaded from the npm registry (``$npm_config_registry`` or
    registry.npmjs.org), checked against the registry's ``dist.integrity`` and ``dist.shasum`` and the
    pinned hashes, and cached. Raises :class:`BookError` with what was expected where when neither works.
    """
    cache_dir = Path(cache_dir)
    tarball = cache_dir / f"mathjax-{version}.tgz"
    if tarball.is_file():
        try:
            _verify_tarball(tarball.read_bytes())
            return tarball
        except BookError as error:
            print(f"book: ignoring the cached {tarball}: {error}", file=sys.stderr)
    registry = _registry()
    meta_url = f"{registry}/mathjax/{version}"
    try:
        with urllib.request.urlopen(meta_url, timeout=timeout) as response:
            dist = json.load(response)["dist"]
        if dist.get("integrity") != MATHJAX_INTEGRITY or dist.get("shasum") != MATHJAX_SHASUM:
            raise BookError(f"{meta_url} announces integrity {dist.get('integrity')} / shasum {dist.get('shasum')}, "
                            f"not the pinned {MATHJAX_INTEGRITY} / {MATHJAX_SHASUM}")
        with urllib.request.urlopen(dist["tarball"], timeout=timeout) as response:
            data = response.read()
        _verify_tarball(data, dist["integrity"], dist["shasum"])
    except BookError:
        raise
    except (OSError, ValueError, KeyError) as error:
        raise BookError(
            f"MathJax {version} is needed to show the course's equations offline, and it is neither cached nor "
            f"downloadable.\n  expected: {tarball} (the npm package's tarball, sha512 {MATHJAX_INTEGRITY[7:]})\n"
            f"  download from {meta_url} failed: {error}\n"
            f"  fix: run `make book` once with access to the npm registry, or copy "
            f"https://registry.npmjs.org/mathjax/-/mathjax-{version}.tgz to {tarball}"
        ) from error
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(tarball)
    print(f"book: MathJax {version} downloaded and verified, cached at {tarball}")
    return tarball


def install_mathjax(tarball: Path, dest: Path) -> Path:
    """Unpack what ``tex-mml-chtml.js`` needs from the tarball into ``dest``; returns the entry script."""
    dest = Path(dest)
    entry = dest / MATHJAX_ENTRY
    stamp = dest / ".from"
    if entry.is_file() and stamp.is_file() and stamp.read_text() == Path(tarball).name:
        return entry
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith("package/"):
                continue
            name = member.name[len("package/"):]
            if name == "LICENSE":
                target = dest / "LICENSE"
            elif name.startswith("es5/"):
                inner = name[len("es5/"):]
                if inner != MATHJAX_ENTRY and not inner.startswith(MATHJAX_KEEP):
                    continue
                target = dest / inner
            else:
                continue
            if ".." in Path(name).parts:
                raise BookError(f"unexpected path {member.name!r} in {tarball}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    if not entry.is_file():
        raise BookError(f"{tarball} has no package/es5/{MATHJAX_ENTRY}")
    stamp.write_text(Path(tarball).name)
    return entry


# --------------------------------------------------------------------------------------------------
# Widgets: their saved state, drawn as static HTML and pictures


_INPUTS = {"IntSlider", "FloatSlider", "FloatLogSlider", "IntRangeSlider", "FloatRangeSlider", "SelectionSlider",
           "SelectionRangeSlider", "Dropdown", "Select", "SelectMultiple", "RadioButtons", "ToggleButtons",
           "Checkbox", "ToggleButton", "Button", "Text", "Textarea", "IntText", "FloatText", "BoundedIntText",
           "BoundedFloatText", "Play", "ColorPicker", "DatePicker", "Combobox", "Password", "TagsInput"}
_BOXES = {"Box", "HBox", "VBox", "GridBox", "Accordion", "Tab", "Stack", "GridspecLayout"}


def _kind(model: dict) -> str:
    return (model.get("model_name") or model.get("state", {}).get("_model_name") or "").removesuffix("Model")


def _control_html(kind: str, state: dict) -> str | None:
    """One widget that is not a container, as a piece of static HTML (None: draw nothing)."""
    description = html.escape(str(state.get("description") or ""))
    label = f"{description}: " if description else ""
    labels = state.get("_options_labels") or []

    def value(text) -> str:
        return f'<span class="clc-value">{html.escape(str(text))}</span>'

    if kind in ("HTML", "HTMLMath"):
        return f"{label}{state.get('value', '')}" if (state.get("value") or label) else None
    if kind == "Label":
        return html.escape(str(state.get("value", ""))) or None
    if kind in ("IntProgress", "FloatProgress"):
        return f'{label}<progress value="{state.get("value", 0)}" max="{state.get("max", 100)}"></progress>'
    if kind in ("SelectionSlider", "Dropdown", "Select", "RadioButtons", "ToggleButtons", "Combobox"):
        index = state.get("index")
        shown = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else state.get("value", "")
        return f"{label}{value(shown)}"
    if kind in ("SelectionRangeSlider", "SelectMultiple"):
        indices = state.get("index") or []
        return f"{label}{value(', '.join(labels[i] for i in indices if 0 <= i < len(labels)))}"
    if kind in ("Checkbox", "ToggleButton", "Valid"):
        return f"{'&#9745;' if state.get('value') else '&#9744;'} {description}"
    if kind == "Button":
        return f'<span class="clc-button">{description or html.escape(str(state.get("icon", "")))}</span>'
    if kind in _INPUTS or "value" in state:
        shown = state.get("value", "")
        if isinstance(shown, list):
            shown = " to ".join(str(v) for v in shown)
        return f"{label}{value(shown)}"
    return None


class _StaticWidgets:
    """Walks one notebook's saved widget state; see :func:`static_widgets`."""

    def __init__(self, state: dict):
        self.state = state

    def model(self, ref: str) -> dict | None:
        return self.state.get(ref.removeprefix("IPY_MODEL_")) if isinstance(ref, str) else None

    def hidden(self, state: dict) -> bool:
        layout = self.model(state.get("layout", "")) or {}
        layout = layout.get("state", {})
        return layout.get("display") == "none" or layout.get("visibility") == "hidden"

    def interactive(self, ref: str, seen: frozenset = frozenset()) -> bool:
        model = self.model(ref)
        if not model or ref in seen:
            return False
        if _kind(model) in _INPUTS:
            return True
        return any(self.interactive(child, seen | {ref}) for child in model.get("state", {}).get("children", []))

    def parts(self, ref: str, seen: frozenset = frozenset()) -> list:
        """The widget as a list of ("html", text) and ("output", nbformat output) in display order."""
        model = self.model(ref)
        if not model or ref in seen:
            return []
        seen = seen | {ref}
        kind, state = _kind(model), model.get("state", {})
        if self.hidden(state):
            return []
        if kind in _BOXES:
            children = [self.parts(child, seen) for child in state.get("children", [])]
            return _merge(children, row=kind == "HBox")
        if kind == "Output":
            found = []
            for output in state.get("outputs", []):
                found += [("output", o) for o in self.outputs(output, seen)]
            return found
        if kind == "MPLCanvas" or model.get("model_module") == "jupyter-matplotlib":
            # An ipympl figure keeps a PNG in _data_url once it has been drawn without a front end
            # (with or without the data: prefix); one never drawn has no picture to show.
            url = state.get("_data_url")
            png = url.split(",", 1)[1] if isinstance(url, str) and url.startswith("data:image/png;base64,") else url
            if isinstance(png, str) and png.startswith("iVBOR"):
                return [("output", {"output_type": "display_data", "metadata": {},
                                    "data": {"image/png": png, "text/plain": "<Figure>"}})]
            if kind != "MPLCanvas":
                return []  # its toolbar
            note = "[a live matplotlib figure: the kernel draws it when the lesson runs in JupyterLab]"
            return [("html", f'<span class="clc-widget-note">{note}</span>')]
        if kind == "Image" and model.get("buffers"):
            data = model["buffers"][0]["data"]
            image_format = state.get("format", "png")
            return [("output", {"output_type": "display_data", "metadata": {},
                                "data": {f"image/{image_format}": data}})]
        piece = _control_html(kind, state)
        if piece is None:
            return []
        return [("html", f'<span class="clc-control">{piece}</span>')]

    def outputs(self, output: dict, seen: frozenset = frozenset()) -> list[dict]:
        """One cell output with any widget in it replaced by its static rendering (a list of outputs)."""
        data = output.get("data", {}) if isinstance(output, dict) else {}
        if WIDGET_VIEW not in data:
            return [output]
        ref = data[WIDGET_VIEW].get("model_id", "")
        pictures = {key: value for key, value in data.items() if key.startswith("image/")}
        if pictures:  # the widget brought its own picture (an ipympl figure does): show that
            return [{"output_type": "display_data", "metadata": output.get("metadata", {}),
                     "data": {**pictures, "text/plain": data.get("text/plain", "")}}]
        if not self.model(ref):
            note = ("An interactive widget: it needs a running kernel and appears when you run the lesson "
                    "in JupyterLab (<code>make lab</code>).")
            return [_html_output(f'<div class="clc-widget"><div class="clc-widget-note">{note}</div></div>')]
        found = self.parts(ref, seen)
        if self.interactive(ref):
            note = ("Interactive in JupyterLab (<code>make lab</code>): there its controls redraw the figure. "
                    "Here, the state the lesson left it in.")
            found = [("html", f'<div class="clc-widget-note">{note}</div>')] + found
        result, pending = [], []
        for kind, value in found + [("end", None)]:
            if kind == "html":
                pending.append(value)
                continue
            if pending:
                result.append(_html_output('<div class="clc-widget">' + "".join(pending) + "</div>"))
                pending = []
            if kind == "output":
                result.append(value)
        return result


def _merge(children: list[list], row: bool) -> list:
    """A box's children: each run of HTML pieces becomes one piece, a row (HBox) or a column (the other
    boxes), so a VBox of controls inside an HBox stays a column; pictures split the runs."""
    merged, pending = [], []

    def flush():
        if pending:
            if row:
                merged.append(("html", '<div class="clc-row">' + "".join(pending) + "</div>"))
            else:
                merged.append(("html", '<div class="clc-col">' + "".join(f"<div>{p}</div>" for p in pending) + "</div>"))
            pending.clear()

    for child in children:
        for kind, value in child:
            if kind == "html":
                pending.append(value)
            else:
                flush()
                merged.append((kind, value))
    flush()
    return merged


def _html_output(text: str) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": text}}


def static_widgets(notebook: dict) -> int:
    """Replace every widget output of an executed notebook, in place, by static outputs: the picture the
    output carries itself when it has one (an ipympl figure's PNG), otherwise what is drawn from the
    widget state nbclient saved in the metadata: an Output widget's own outputs (the explorers' figures),
    an ipympl canvas's last PNG, the text of HTML and Label widgets, each control as
    ``description: value``, a progress bar as a ``<progress>`` element, and a one-line note that the
    widget is interactive in JupyterLab. The saved
    state is then removed from the metadata, so no page asks for the widgets' JavaScript. Returns how many
    widget outputs were replaced."""
    metadata = notebook.get("metadata", {})
    state = metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    walker, replaced = _StaticWidgets(state), 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        new = []
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                replaced += 1
            new += walker.outputs(output)
        cell["outputs"] = new
    metadata.pop("widgets", None)
    return replaced


# --------------------------------------------------------------------------------------------------
# Executing the lessons


def _package_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "clcourse").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def execution_key(notebook: Path | bytes, profile: str) -> str:
    """The cache key of an executed lesson: the notebook (a path or its bytes), the profile and the
    ``clcourse`` sources."""
    data = notebook if isinstance(notebook, bytes) else Path(notebook).read_bytes()
    digest = hashlib.sha256()
    for part in (data, profile.encode(), _package_hash().encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:20]


def _has_outputs(notebook: dict) -> bool:
    return any(cell.get("outputs") for cell in notebook.get("cells", []) if cell.get("cell_type") == "code")


def execute_lesson(source: Path, cache_dir: Path, profile: str = "quick", timeout: float = 3600,
                   run_dir: Path | None = None) -> dict:
    """The lesson executed top to bottom (nbclient, the notebook's kernel, ``CLCOURSE_PROFILE=profile``,
    widget state stored), from ``cache_dir`` when this exact notebook already ran with this profile and
    this package. A cell that raises, or runs longer than ``timeout`` seconds (0: no limit), stops the
    build with the lesson's name and the error."""
    import nbclient
    import nbformat

    source, cache_dir = Path(source), Path(cache_dir)
    data = source.read_bytes()  # read once: the key and the run see the same notebook
    cached = cache_dir / f"{source.stem}.{execution_key(data, profile)}.ipynb"
    if cached.is_file():
        print(f"book: {source.name}: executed copy from the cache ({cached.name})")
        return json.loads(cached.read_text(encoding="utf-8"))
    run_dir = Path(run_dir or cache_dir / "run")
    run_dir.mkdir(parents=True, exist_ok=True)  # the kernel's cwd: nothing lands in the repository
    started = time.monotonic()
    cell_started = [started]

    def on_start(cell, cell_index):
        cell_started[0] = time.monotonic()

    def on_executed(cell, cell_index, execute_reply):
        seconds = time.monotonic() - cell_started[0]
        if seconds >= SLOW_CELL_S:
            print(f"book:   {source.name} cell {cell_index}: {seconds:.0f} s", flush=True)

    def run():
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=timeout if timeout > 0 else None, startup_timeout=180,
                                         store_widget_state=True, resources={"metadata": {"path": str(run_dir)}},
                                         on_cell_start=on_start, on_cell_executed=on_executed)
        client.execute()
        return notebook

    previous = os.environ.get("CLCOURSE_PROFILE")
    os.environ["CLCOURSE_PROFILE"] = profile
    print(f"book: executing {source.name} (CLCOURSE_PROFILE={profile}) ...", flush=True)
    try:
        try:
            notebook = run()
        except nbclient.exceptions.DeadKernelError as error:  # killed from outside, or out of memory: once more
            print(f"book: {source.name}: the kernel died ({error}); running the lesson once more", flush=True)
            started = time.monotonic()
            notebook = run()
    except nbclient.exceptions.CellTimeoutError as error:
        raise BookError(f"{source}: a cell ran longer than {timeout:g} s (a busy machine is slower; "
                        f"--timeout SECONDS, or BOOK_ARGS='--timeout 0' for no limit):\n{str(error)[-2000:]}") from error
    except (nbclient.exceptions.CellExecutionError, nbclient.exceptions.DeadKernelError) as error:
        raise BookError(f"{source} failed while executing:\n{str(error)[-3000:]}") from error
    finally:
        if previous is None:
            os.environ.pop("CLCOURSE_PROFILE", None)
        else:
            os.environ["CLCOURSE_PROFILE"] = previous
    print(f"book: executed {source.name} in {time.monotonic() - started:.0f} s", flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"{source.stem}.*.ipynb"):
        stale.unlink()
    nbformat.write(notebook, cached)
    return json.loads(cached.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Checking the built site


_TAGS = re.compile(r"<(script|img|iframe|audio|video|source|embed|track|link|object)\b[^>]*>", re.IGNORECASE)
_URL_ATTRIBUTES = re.compile(r"\s(?:src|href|srcset|data)\s*=\s*[\"']([^\"']+)", re.IGNORECASE)
_LOADING_RELS = re.compile(r"\srel\s*=\s*[\"'][^\"']*(stylesheet|preload|prefetch|icon|manifest|modulepreload)",
                           re.IGNORECASE)
_CSS_URL = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])([^\"')\s]+)", re.IGNORECASE)
_ANCHORS = re.compile(r"<a\b[^>]*?\shref\s*=\s*[\"']([^\"']+)", re.IGNORECASE)


def _remote(url: str) -> bool:
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url.strip(), re.IGNORECASE)) and not url.startswith("file:")


def audit_site(site: Path) -> tuple[list[str], list[str]]:
    """(remote loads, outside links) of a built site: every script, style sheet, font, image or frame an
    HTML page or a style sheet would fetch from another host, and every ``<a href>`` to another host."""
    site = Path(site)
    loads, links = [], []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        for match in _TAGS.finditer(text):
            tag, element = match.group(1).lower(), match.group(0)
            if tag == "link" and not _LOADING_RELS.search(element):
                continue  # rel="canonical", "next", "search", ...: a reference, not a download
            for url in _URL_ATTRIBUTES.findall(element):
                if any(_remote(part.split()[0]) for part in url.split(",") if part.strip()):
                    loads.append(f"{page.relative_to(site)}: <{tag}> {url}")
        links += [f"{page.relative_to(site)}: {url}" for url in _ANCHORS.findall(text) if _remote(url)]
    for sheet in sorted(site.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        loads += [f"{sheet.relative_to(site)}: url({url})" for url in _CSS_URL.findall(text) if _remote(url)]
    return loads, links


# --------------------------------------------------------------------------------------------------
# The build


def _write_if_changed(path: Path, data: bytes | str) -> None:
    """Write only when the content differs, so Sphinx's incremental build skips unchanged pages."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _prune(folder: Path, keep: set[Path]) -> None:
    if folder.is_dir():
        for path in folder.rglob("*.ipynb"):
            if path not in keep:
                path.unlink()


def build_book(lessons: Sequence[Path], exercises: Sequence[Path], out_dir: Path, execute: bool = True, *,
               executed_dir: Path | None = None, work_dir: Path | None = None, readme: Path = REPO / "README.md",
               profile: str = "quick", mathjax_cache: Path = REPO / "build" / "mathjax", timeout: float = 3600,
               quiet: bool = True) -> Path:
    """Build the website of ``lessons`` (executed when ``execute``) and ``exercises`` (never executed) into
    ``out_dir``; returns ``out_dir / "index.html"``.

    ``executed_dir``: a folder of already-executed lessons (same file names) used instead of running them;
    a lesson missing there, or saved without outputs, is executed as usual. ``work_dir`` (default
    ``<out_dir>-work``) holds the generated Jupyter Book project (``src/``), Sphinx's doctrees and the cache
    of executed lessons (``executed/``). Raises :class:`BookError` when a lesson fails, an exercise carries
    solutions, MathJax cannot be had, Sphinx fails or a page would load something from another host.
    """
    from jupyter_book.sphinx import build_sphinx

    started = time.monotonic()
    out_dir = Path(out_dir).resolve()
    work_dir = Path(work_dir).resolve() if work_dir else out_dir.with_name(out_dir.name + "-work")
    src = work_dir / "src"
    check_no_solutions(exercises)
    mathjax = fetch_mathjax(Path(mathjax_cache))
    lesson_pages, exercise_pages = pages(lessons, exercises)
    title = readme_parts(readme)[0]

    written: set[Path] = set()
    widgets = 0
    for page in lesson_pages:
        notebook = None
        if executed_dir and (Path(executed_dir) / page.source.name).is_file():
            candidate = json.loads((Path(executed_dir) / page.source.name).read_text(encoding="utf-8"))
            if _has_outputs(candidate):
                print(f"book: {page.source.name}: executed copy from {executed_dir}")
                notebook = candidate
            else:
                print(f"book: {Path(executed_dir) / page.source.name} has no outputs: executing the lesson")
        if notebook is None:
            if execute:
                notebook = execute_lesson(page.source, work_dir / "executed", profile, timeout, work_dir / "run")
            else:
                notebook = json.loads(page.source.read_text(encoding="utf-8"))
        widgets += static_widgets(notebook)
        target = src / f"{page.docname}.ipynb"
        _write_if_changed(target, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        written.add(target)
    for page in exercise_pages:  # as they are: no execution, no outputs added
        target = src / f"{page.docname}.ipynb"
        _write_if_changed(target, page.source.read_bytes())
        written.add(target)
    _prune(src / "lessons", written)
    _prune(src / "exercises", written)

    executed = execute or executed_dir is not None
    _write_if_changed(src / "intro.md", intro_markdown(readme, lesson_pages, exercise_pages, executed, profile))
    _write_if_changed(src / "_toc.yml", yaml.safe_dump(make_toc(lesson_pages, exercise_pages), sort_keys=False))
    _write_if_changed(src / "_config.yml", yaml.safe_dump(make_config(title), sort_keys=False))
    for css in STATIC.glob("*.css"):
        _write_if_changed(src / "_static" / css.name, css.read_bytes())

    print(f"book: building {len(lesson_pages)} lessons and {len(exercise_pages)} exercises with Sphinx ...",
          flush=True)
    status = build_sphinx(src, out_dir, noconfig=True, doctreedir=work_dir / "doctrees", path_config=src / "_config.yml",
                          confoverrides={"latex_individualpages": False,
                                                 "external_toc_path": (src / "_toc.yml").as_posix()},
                          quiet=quiet, builder="html")
    if status:
        raise BookError(f"Sphinx failed ({status!r}); its messages are above")
    install_mathjax(mathjax, out_dir / "_static" / "mathjax")  # where mathjax_path points
    loads, links = audit_site(out_dir)
    if loads:
        raise BookError("the site would load from other hosts:\n  " + "\n  ".join(loads[:30]))
    index = out_dir / "index.html"
    if not index.is_file():
        raise BookError(f"Sphinx wrote no {index}")
    print(f"book: {len(lesson_pages)} lessons, {len(exercise_pages)} exercises, {widgets} widgets drawn static; "
          f"no page loads from another host ({len(links)} links to other sites)")
    print(f"book: built in {time.monotonic() - started:.0f} s: {index}")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m book.build``: the course website into ``build/book`` (``make book``)."""
    parser = argparse.ArgumentParser(prog="python -m book.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "book", help="the site folder (build/book)")
    parser.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="the lessons' folder")
    parser.add_argument("--exercises", type=Path, default=REPO / "exercises",
                        help="the student exercises' folder (its source/ sub-folder is never read)")
    parser.add_argument("--executed", type=Path, default=None,
                        help="a folder of already-executed lessons to use instead of running them")
    parser.add_argument("--no-execute", dest="execute", action="store_false",
                        help="publish the lessons without running them (no outputs)")
    parser.add_argument("--profile", default="quick", help="CLCOURSE_PROFILE for the lessons (quick)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds a lesson's cell may run before the build stops (3600; 0: no limit)")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    args = parser.parse_args(argv)
    try:
        build_book(discover(args.notebooks), discover(args.exercises), args.out, args.execute,
                   executed_dir=args.executed, profile=args.profile, timeout=args.timeout, quiet=not args.verbose)
    except BookError as error:
        print(f"book: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
