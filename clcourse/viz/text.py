"""Sentences with each word on a background as strong as its weight: where an attention looks (SSCL, lesson 16).

The HTML is self-contained (inline styles, no script, nothing loaded from elsewhere), so it shows the same in
JupyterLab, in an exported notebook and on the course's website.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["highlighted_sentences"]


def highlighted_sentences(sentences: Sequence[Sequence[str]], weights: torch.Tensor | np.ndarray,
                          labels: Sequence[str] | None = None, *, color: tuple[int, int, int] = (230, 120, 0),
                          scale: float | None = None) -> str:
    """An HTML table: one row per sentence, each word on a background whose opacity is its weight / ``scale``.

    Args:
        sentences: N sentences, each a list of words.
        weights: [N, L] with L at least the longest sentence's length; row n's first ``len(sentences[n])``
            entries weigh its words (the rest, padding, are ignored). Finite and >= 0.
        labels: optional N strings, shown in a first column (the gold aspect, a prediction...).
        color: the background's RGB at full weight.
        scale: the weight that gets a full background; default each row's largest, so every row shows its
            most-weighted word at full strength. Pass a number (e.g. 1.0) to compare rows on one scale.

    Each word's title (shown on hovering) holds its weight with three decimals.
    """
    weights = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    if weights.ndim != 2 or len(weights) != len(sentences):
        raise ValueError(f"weights must be [N, L] with N = {len(sentences)} (one row per sentence), got shape "
                         f"{list(weights.shape)}")
    longest = max((len(words) for words in sentences), default=0)
    if weights.shape[1] < longest:
        raise ValueError(f"weights has {weights.shape[1]} columns but the longest sentence has {longest} words")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if labels is not None and len(labels) != len(sentences):
        raise ValueError(f"labels must hold one string per sentence ({len(sentences)}), got {len(labels)}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    red, green, blue = color
    rows = []
    for n, words in enumerate(sentences):
        row = weights[n, :len(words)]
        top = scale if scale is not None else (float(row.max()) if len(row) and row.max() > 0 else 1.0)
        cells = []
        for word, weight in zip(words, row):
            alpha = min(float(weight) / top, 1.0)
            cells.append(f'<span title="{weight:.3f}" style="background: rgba({red}, {green}, {blue}, {alpha:.3f}); '
                         f'padding: 1px 3px; border-radius: 3px">{html.escape(word)}</span>')
        label = f'<td style="text-align: left; padding-right: 1em"><b>{html.escape(labels[n])}</b></td>' \
            if labels is not None else ""
        rows.append(f'<tr>{label}<td style="text-align: left">{" ".join(cells)}</td></tr>')
    return f'<table style="border-collapse: collapse; font-family: monospace">{"".join(rows)}</table>'
