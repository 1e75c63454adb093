"""The negatives explorer: how the number and the hardness of InfoNCE's negatives shape its loss and gradient.

For a fixed embedding (two views of M images, e.g. from encoders trained with different losses)
each query i has one positive (its other view) and M - 1 candidate negatives (the other images'
views). The explorer picks K of them, at random or the K most similar to the query ("hard"),
and shows

- where the chosen negatives lie among all candidates' similarities, and which are *false
  negatives* (same class as the query: with 10 balanced classes, a random candidate is one 10% of
  the time);
- the gradient weight on each chosen negative, i.e. how hard the loss pushes it away from the
  query: d loss / d logit_k, which for plain InfoNCE is the softmax probability of negative k;
  Robinson et al.'s beta [2] shifts this weight towards the most similar negatives;
- over all queries, the mean loss and the share of the push that lands on false negatives, as K
  grows, for random and for hard negatives.

Everything it shows is computed from the precomputed similarity matrices; a control change
recomputes at most a few [M, K] softmaxes. The ipywidgets callbacks call
:meth:`NegativesExplorer.set_model`, :meth:`~NegativesExplorer.set_k`,
:meth:`~NegativesExplorer.set_selection`, :meth:`~NegativesExplorer.set_beta` and
:meth:`~NegativesExplorer.set_query`, which tests call directly.

[1] van den Oord et al., Representation Learning with Contrastive Predictive Coding (CPC), 2018.
[2] Robinson, Chuang, Sra, Jegelka, Contrastive Learning with Hard Negative Samples, ICLR 2021.
[3] Chuang, Robinson, Lin, Torralba, Jegelka, Debiased Contrastive Learning, NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from clcourse.losses import info_nce_from_similarities

from .output import show_figure
from .plots import check_images, display_pixels, to_numpy

__all__ = ["negative_weights", "NegativesState", "NegativesExplorer"]

SELECTIONS = ("random", "hard")
_TRUE_NEG, _FALSE_NEG, _POSITIVE, _ALL = "tab:blue", "tab:red", "tab:green", "0.75"


def negative_weights(
    pos_sim: Tensor,
    neg_sim: Tensor,
    temperature: float,
    *,
    hard_negative_beta: float = 0.0,
    debiased_tau_plus: float = 0.0,
) -> Tensor:
    """How hard each query's loss pushes each negative away: d loss_i / d logit_ik, [N, K].

    pos_sim [N], neg_sim [N, K] as in `clcourse.losses.info_nce_from_similarities`, logit = similarity / t. For
    plain InfoNCE this is the softmax probability of negative k among the 1 + K candidates, so a
    row sums to 1 - p(positive). beta > 0 [2] moves weight towards the most similar negatives;
    as the weights w = softmax(beta * l) are themselves differentiated (as in the authors' code),
    the least similar negatives then get a small negative weight: a slight pull, not a push.
    """
    neg = neg_sim.detach().double().requires_grad_(True)
    losses = info_nce_from_similarities(
        pos_sim.detach().double(), neg, temperature,
        hard_negative_beta=hard_negative_beta, debiased_tau_plus=debiased_tau_plus,
    )
    (grad,) = torch.autograd.grad(losses.sum(), neg)
    return (grad * temperature).to(neg_sim.dtype)


@dataclass(frozen=True)
class NegativesState:
    """What the explorer shows: the embedding (model), K, random or hard negatives, beta, the query index."""

    model: str
    k: int
    selection: str
    beta: float
    query: int


class NegativesExplorer:
    """Widget: pick K random or K hard negatives for a query and see the loss and where its push goes.

    Args:
        embeddings: name -> (queries [M, D], keys [M, D]): two views of the same M images under
            one model (e.g. the projections of `clcourse.lessons.negatives.view_embeddings`);
            query i's positive is keys[i], its candidate negatives keys[j], j != i.
        labels: [M] class labels; a candidate with the query's label is a false negative.
        temperature: t of the loss (the one the models trained with).
        k_values: the K the slider offers, each in [1, M - 1].
        betas: the hardness weights beta >= 0 of [2] the slider offers (0: plain InfoNCE).
        images: optional [M, C, H, W] in [0, 1]: then the query and its most pushed negatives
            are shown as thumbnails (red frame: same class as the query).
        seed: seeds each query's fixed random order of candidates, so K random negatives are the
            first K of that order (nested as K grows, the same for every model).
        n_shown: how many of the most pushed negatives get a thumbnail.

    Attributes:
        widget: the ipywidgets VBox to display (displaying the explorer displays it).
        state: the current `NegativesState`.
        figure: the matplotlib Figure redrawn on every change.
        last_negatives: [K] indices of the chosen negatives of the current query.
        last_similarities: [K] their cosine similarities to the query; last_positive_similarity a float.
        last_false: [K] bool, which of them are false negatives.
        last_weights: [K] their gradient weights (`negative_weights`).
        last_loss: the current query's loss.
        last_curves: selection -> dict of arrays over `k_values`: "loss" (mean over queries),
            "false_fraction" (false negatives among the chosen) and "false_push" (share of the
            push, the positive gradient weights, that lands on false negatives), for the current
            model and beta.
    """

    def __init__(
        self,
        embeddings: Mapping[str, tuple[Tensor, Tensor]],
        labels: Tensor | np.ndarray,
        *,
        temperature: float = 0.5,
        k_values: Sequence[int] = (1, 4, 16, 64, 256),
        betas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
        images: Tensor | np.ndarray | None = None,
        seed: int = 0,
        n_shown: int = 6,
    ) -> None:
        if not isinstance(embeddings, Mapping) or not embeddings:
            raise ValueError("embeddings must be a non-empty dict name -> (queries [M, D], keys [M, D])")
        self.labels = torch.as_tensor(to_numpy(labels)).long()
        m = self.labels.shape[0]
        if self.labels.dim() != 1 or m < 2:
            raise ValueError(f"labels must be [M] with M >= 2, got {list(self.labels.shape)}")
        self.similarity = {str(name): self._similarity(name, pair, m) for name, pair in embeddings.items()}
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.k_values = [int(k) for k in k_values]
        if not self.k_values or any(not 1 <= k <= m - 1 for k in self.k_values):
            raise ValueError(f"k_values must be non-empty, each in [1, M - 1] = [1, {m - 1}], got {list(k_values)}")
        self.betas = [float(b) for b in betas]
        if not self.betas or any(b < 0 for b in self.betas):
            raise ValueError(f"betas must be non-empty and >= 0, got {list(betas)}")
        self.images = None if images is None else check_images(images, m)
        self.n_shown = int(n_shown)
        self.n_points = m

        self.same_class = self.labels.unsqueeze(0) == self.labels.unsqueeze(1)  # [M, M]
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(m, m, generator=generator).fill_diagonal_(math.inf)  # the query itself sorts last
        self.random_order = noise.argsort(dim=1)[:, : m - 1]  # [M, M - 1] candidates in a fixed random order
        self.hard_order = {
            name: s.clone().fill_diagonal_(-math.inf).argsort(dim=1, descending=True, stable=True)[:, : m - 1]
            for name, s in self.similarity.items()
        }
        self._curve_cache: dict[tuple[str, float], dict[str, dict[str, np.ndarray]]] = {}

        self.state = NegativesState(next(iter(self.similarity)), self.k_values[len(self.k_values) // 2],
                                    SELECTIONS[0], self.betas[0], 0)
        self._build_widgets()
        self._redraw()

    @staticmethod
    def _similarity(name, pair, m: int) -> Tensor:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"embeddings[{name!r}] must be a pair (queries [M, D], keys [M, D])")
        q, k = (torch.as_tensor(to_numpy(v)).float() for v in pair)
        if q.dim() != 2 or q.shape != k.shape or q.shape[0] != m:
            raise ValueError(
                f"embeddings[{name!r}] must be two [M, D] tensors with M = {m} (one row per label), "
                f"got {list(q.shape)} and {list(k.shape)}"
            )
        return F.normalize(q, dim=1) @ F.normalize(k, dim=1).t()  # [M, M] cosines; the diagonal holds the positives

    # -- what is shown, as plain computations ---------------------------------------------

    def order(self, model: str, selection: str) -> Tensor:
        """[M, M - 1] candidate negatives of every query: hardest first ("hard") or in a fixed random order."""
        return self.hard_order[model] if selection == "hard" else self.random_order

    def curves(self, model: str | None = None, beta: float | None = None) -> dict[str, dict[str, np.ndarray]]:
        """selection -> {"loss", "false_fraction", "false_push"}, each an array over `k_values` (means over queries)."""
        model = self.state.model if model is None else model
        beta = self.state.beta if beta is None else float(beta)
        key = (model, beta)
        if key not in self._curve_cache:
            s = self.similarity[model]
            pos = s.diagonal()
            result = {}
            for selection in SELECTIONS:
                rows = {"loss": [], "false_fraction": [], "false_push": []}
                for k in self.k_values:
                    chosen = self.order(model, selection)[:, :k]
                    neg, false = s.gather(1, chosen), self.same_class.gather(1, chosen)
                    loss = info_nce_from_similarities(pos, neg, self.temperature, hard_negative_beta=beta)
                    w = negative_weights(pos, neg, self.temperature, hard_negative_beta=beta)
                    rows["loss"].append(loss.mean().item())
                    rows["false_fraction"].append(false.float().mean().item())
                    rows["false_push"].append(_push_share(w, false).mean().item())
                result[selection] = {name: np.array(v) for name, v in rows.items()}
            self._curve_cache[key] = result
        return self._curve_cache[key]

    def table(self, model: str | None = None, beta: float | None = None) -> list[dict]:
        """The curves as rows, one per (K, selection): what the lower panels plot, for printing."""
        curves = self.curves(model, beta)
        return [
            {"K": k, "negatives": sel, **{name: float(curves[sel][name][i]) for name in curves[sel]}}
            for i, k in enumerate(self.k_values)
            for sel in SELECTIONS
        ]

    def model_summary(self) -> list[dict]:
        """One row per model: mean cosine similarity of positives, of same-class and of other-class pairs
        (query view vs key view, the query's own image excluded), and how often a query's most similar
        candidate negative is a false negative."""
        rows = []
        off_diagonal = ~torch.eye(self.n_points, dtype=torch.bool)
        for name, s in self.similarity.items():
            same = self.same_class & off_diagonal
            other = ~self.same_class
            nearest = self.hard_order[name][:, 0]
            rows.append({
                "model": name,
                "positive": s.diagonal().mean().item(),
                "same class": s[same].mean().item(),
                "other class": s[other].mean().item(),
                "nearest is same class": self.same_class.gather(1, nearest.unsqueeze(1)).float().mean().item(),
            })
        return rows

    # -- the update methods the widgets call ------------------------------------------------

    def set_model(self, name: str) -> None:
        """Show the embedding called ``name``."""
        _check_choice("model", name, list(self.similarity))
        self._update(model=name)

    def set_k(self, k: int) -> None:
        """Use the first K negatives (K one of `k_values`)."""
        _check_choice("k", k, self.k_values)
        self._update(k=int(k))

    def set_selection(self, selection: str) -> None:
        """``"random"``: K candidates drawn at random; ``"hard"``: the K most similar to the query."""
        _check_choice("selection", selection, list(SELECTIONS))
        self._update(selection=selection)

    def set_beta(self, beta: float) -> None:
        """Hardness weighting beta of [2] (one of `betas`; 0 is plain InfoNCE)."""
        _check_choice("beta", float(beta), self.betas)
        self._update(beta=float(beta))

    def set_query(self, index: int) -> None:
        """Show query ``index`` (0 <= index < M)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_points:
            raise ValueError(f"query must be an int in [0, {self.n_points - 1}], got {index!r}")
        self._update(query=int(index))

    def _update(self, **changes) -> None:
        new_state = replace(self.state, **changes)
        if new_state == self.state:  # a widget echoing a change made in code
            return
        self.state = new_state
        self.model_control.value = new_state.model
        self.k_control.value = new_state.k
        self.selection_control.value = new_state.selection
        self.beta_control.value = new_state.beta
        self.query_control.value = new_state.query
        self._redraw()

    # -- widgets and drawing ----------------------------------------------------------------

    def _build_widgets(self) -> None:
        s = self.state
        self.model_control = widgets.Dropdown(options=list(self.similarity), value=s.model, description="model")
        self.k_control = widgets.SelectionSlider(
            options=self.k_values, value=s.k, description="K negatives", continuous_update=False
        )
        self.selection_control = widgets.ToggleButtons(options=list(SELECTIONS), value=s.selection, description="pick")
        self.beta_control = widgets.SelectionSlider(
            options=self.betas, value=s.beta, description="beta", continuous_update=False
        )
        self.query_control = widgets.BoundedIntText(value=s.query, min=0, max=self.n_points - 1, description="query")
        self.model_control.observe(lambda c: self.set_model(c["new"]), names="value")
        self.k_control.observe(lambda c: self.set_k(c["new"]), names="value")
        self.selection_control.observe(lambda c: self.set_selection(c["new"]), names="value")
        self.beta_control.observe(lambda c: self.set_beta(c["new"]), names="value")
        self.query_control.observe(lambda c: self.set_query(c["new"]), names="value")
        self.info = widgets.HTML()
        self.figure = Figure(figsize=(11, 8.2 if self.images is not None else 6.8))
        self.output = widgets.Output()
        self.widget = widgets.VBox([
            widgets.HBox([self.model_control, self.selection_control]),
            widgets.HBox([self.k_control, self.beta_control, self.query_control]),
            self.info,
            self.output,
        ])

    def _current(self) -> None:
        """Fill the last_* attributes for the current state."""
        st = self.state
        s = self.similarity[st.model]
        i = st.query
        chosen = self.order(st.model, st.selection)[i, : st.k]
        neg = s[i, chosen]
        pos = s[i, i]
        self.last_negatives = chosen.numpy()
        self.last_similarities = neg.numpy()
        self.last_positive_similarity = float(pos)
        self.last_false = self.same_class[i, chosen].numpy()
        self.last_loss = float(
            info_nce_from_similarities(pos.view(1), neg.view(1, -1), self.temperature, hard_negative_beta=st.beta)
        )
        self.last_weights = negative_weights(
            pos.view(1), neg.view(1, -1), self.temperature, hard_negative_beta=st.beta
        )[0].numpy()
        self.last_curves = self.curves()

    def _redraw(self) -> None:
        self._current()
        st = self.state
        fig = self.figure
        fig.clear()
        rows = 3 if self.images is not None else 2
        grid = fig.add_gridspec(rows, 2, height_ratios=[1, 1, 0.55][:rows], hspace=0.55, wspace=0.25)
        self._draw_similarities(fig.add_subplot(grid[0, 0]))
        self._draw_weights(fig.add_subplot(grid[0, 1]))
        loss_ax = fig.add_subplot(grid[1, 0])
        push_ax = fig.add_subplot(grid[1, 1])
        self._draw_curves(loss_ax, push_ax)
        if self.images is not None:
            self._draw_thumbnails(grid[2, :])
        n_false = int(self.last_false.sum())
        push = float(_push_share(torch.from_numpy(self.last_weights), torch.from_numpy(self.last_false)))
        fig.suptitle(
            f"{st.model}: query {st.query} (class {int(self.labels[st.query])}), {st.k} {st.selection} negatives, "
            f"beta = {st.beta:g}: loss {self.last_loss:.3f}; {n_false} false negative{'s' * (n_false != 1)} "
            f"get{'s' * (n_false == 1)} {push:.0%} of the push",
            fontsize="medium",
        )
        self.info.value = (
            f"<b>query {st.query}</b>: loss {self.last_loss:.3f} (log(1 + K) = {math.log(1 + st.k):.3f} when the "
            f"positive looks like any negative) &middot; positive similarity {self.last_positive_similarity:.3f}"
            f" &middot; {n_false} of {st.k} negatives share the query's class"
        )
        self._show()

    def _draw_similarities(self, ax) -> None:
        st = self.state
        s = self.similarity[st.model][st.query].numpy()
        others = np.delete(s, st.query)
        bins = np.linspace(min(others.min(), self.last_positive_similarity) - 0.02, 1.0, 41)
        ax.hist(others, bins=bins, color=_ALL, label=f"all {len(others)} candidates")
        ax.hist(
            [self.last_similarities[~self.last_false], self.last_similarities[self.last_false]],
            bins=bins, stacked=True, color=[_TRUE_NEG, _FALSE_NEG], label=["chosen: other class", "chosen: same class"],
        )
        ax.axvline(self.last_positive_similarity, color=_POSITIVE, lw=2, label="positive")
        ax.set(xlabel="cosine similarity to the query", ylabel="count", title="where the chosen negatives lie")
        ax.legend(fontsize="x-small", loc="upper left", framealpha=0.9)

    def _draw_weights(self, ax) -> None:
        order = np.argsort(-self.last_similarities, kind="stable")
        w = self.last_weights[order]
        colors = np.where(self.last_false[order], _FALSE_NEG, _TRUE_NEG)
        ax.bar(np.arange(len(w)), w, width=1.0 if len(w) > 30 else 0.8, color=colors)
        ax.set(xlabel="chosen negatives, most similar first", ylabel="d loss / d logit",
               title="push on each negative (gradient weight)")
        ax.set_xlim(-0.6, len(w) - 0.4)

    def _draw_curves(self, loss_ax, push_ax) -> None:
        st = self.state
        ks = np.array(self.k_values)
        styles = {"random": dict(color="tab:purple", marker="o"), "hard": dict(color="tab:orange", marker="s")}
        for sel in SELECTIONS:
            c = self.last_curves[sel]
            loss_ax.plot(ks, c["loss"], label=f"{sel} negatives", **styles[sel])
            push_ax.plot(ks, c["false_push"], label=f"{sel}: share of the push", **styles[sel])
            push_ax.plot(ks, c["false_fraction"], ls=":", color=styles[sel]["color"], label=f"{sel}: share of the negatives")
        loss_ax.plot(ks, np.log1p(ks), ls="--", color="gray", label="log(1 + K)")
        i = self.k_values.index(st.k)
        cur = self.last_curves[st.selection]
        loss_ax.plot(st.k, cur["loss"][i], "o", ms=12, mfc="none", mec="black")
        push_ax.plot(st.k, cur["false_push"][i], "o", ms=12, mfc="none", mec="black")
        for ax in (loss_ax, push_ax):
            ax.set_xscale("log")
            ax.set_xlabel("K negatives per query")
        loss_ax.set(ylabel="mean loss", title=f"mean over all {self.n_points} queries")
        push_ax.set(ylabel="fraction", ylim=(-0.02, 1.02), title="false negatives (same class)")
        loss_ax.legend(fontsize="x-small")
        push_ax.legend(fontsize="x-small")

    def _draw_thumbnails(self, cell) -> None:
        st = self.state
        top = np.argsort(-self.last_weights, kind="stable")[: self.n_shown]
        items = [(st.query, "query", "black")]
        items += [
            (int(self.last_negatives[j]), f"w = {self.last_weights[j]:.2f}", _FALSE_NEG if self.last_false[j] else _TRUE_NEG)
            for j in top
        ]
        sub = cell.subgridspec(1, 1 + self.n_shown, wspace=0.15)
        for col, (index, caption, color) in enumerate(items):
            ax = self.figure.add_subplot(sub[0, col])
            pixels, cmap = display_pixels(self.images[index])
            ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2.5)
            ax.set_title(caption, fontsize="small", color=color)

    def _show(self) -> None:
        show_figure(self.output, self.figure, dpi=80)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _push_share(weights: Tensor, false: Tensor) -> Tensor:
    """Share of the push (positive gradient weights) that lands on false negatives: [..., K] -> [...]."""
    push = weights.clamp_min(0)
    return (push * false).sum(-1) / push.sum(-1).clamp_min(1e-30)


def _check_choice(what: str, value, choices: list) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
