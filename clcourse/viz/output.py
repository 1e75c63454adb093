"""Show a matplotlib figure in an ipywidgets ``Output`` as a PNG: how every explorer redraws.

A PNG rendered here rather than ``display(figure)``, which needs the inline backend's formatter
and so fails in other backends. Outside IPython (a script, a test) there is no notebook to show
it in, and nothing is rendered.
"""

from __future__ import annotations

import io

from IPython import get_ipython
from IPython.display import Image, clear_output, display
from matplotlib.figure import Figure


def figure_png(figure: Figure, dpi: int = 90) -> bytes:
    """The figure rendered as PNG bytes."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=dpi)
    return png.getvalue()


def show_png(output, png: bytes) -> None:
    """Replace what the ``ipywidgets.Output`` shows with the PNG; nothing outside IPython."""
    if get_ipython() is None:
        return
    with output:
        clear_output(wait=True)  # wait: no flicker between the old and the new picture
        display(Image(data=png, format="png"))


def show_figure(output, figure: Figure, dpi: int = 90) -> None:
    """:func:`show_png` of the figure, rendered only inside IPython."""
    if get_ipython() is not None:
        show_png(output, figure_png(figure, dpi))
