"""Tests of clcourse.viz.negatives: the loss on similarities, the gradient weights, and the explorer's update methods."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clcourse.losses import info_nce, info_nce_from_similarities  # noqa: E402
from clcourse.viz.negatives import NegativesExplorer, NegativesState, negative_weights  # noqa: E402

M = 30


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _embeddings(seed, m=M, d=6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(m) % 3
    centres = torch.randn(3, d, generator=g) * 2
    q = centres[labels] + torch.randn(m, d, generator=g)
    k = q + 0.3 * torch.randn(m, d, generator=g)
    return q, k, labels


@pytest.fixture
def explorer():
    q, k, labels = _embeddings(0)
    q2, k2, _ = _embeddings(1)
    images = torch.rand(M, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return NegativesExplorer(
        {"a": (q, k), "b": (q2, k2)}, labels, temperature=0.5, k_values=(1, 4, 16), betas=(0.0, 1.0), images=images
    )


# -- the loss on similarities ---------------------------------------------------------------


@pytest.mark.parametrize("beta, tau_plus", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (2.0, 0.3)])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_loss_on_similarities_equals_the_package_info_nce(beta, tau_plus, temperature):
    g = torch.Generator().manual_seed(3)
    q, p, neg = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((5, 4), (5, 4), (5, 7, 4)))
    qn, pn, nn_ = F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(neg, dim=-1)
    pos_sim = (qn * pn).sum(1)
    neg_sim = torch.einsum("nd,nkd->nk", qn, nn_)
    ours = info_nce_from_similarities(pos_sim, neg_sim, temperature, hard_negative_beta=beta, debiased_tau_plus=tau_plus)
    assert ours.shape == (5,)
    expected = info_nce(q, p, neg, temperature, hard_negative_beta=beta, debiased_tau_plus=tau_plus)
    torch.testing.assert_close(ours.mean(), expected)


def test_plain_weights_are_the_softmax_probabilities():
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.rand(3, generator=g) * 2 - 1, torch.rand(3, 5, generator=g) * 2 - 1
    w = negative_weights(pos, neg, 0.2)
    probs = torch.softmax(torch.cat([pos.unsqueeze(1), neg], 1) / 0.2, dim=1)
    torch.testing.assert_close(w, probs[:, 1:])
    torch.testing.assert_close(w.sum(1), 1 - probs[:, 0])


def test_beta_moves_the_push_to_the_most_similar_negative():
    pos, neg = torch.tensor([0.9]), torch.tensor([[0.8, 0.2, 0.0, -0.3]])
    plain = negative_weights(pos, neg, 0.5)[0]
    hard = negative_weights(pos, neg, 0.5, hard_negative_beta=2.0)[0]
    assert hard[0] / hard.clamp_min(0).sum() > plain[0] / plain.sum()
    assert hard[-1] < 0  # the weights' own gradient pulls the easiest negative slightly


def test_more_negatives_raise_the_loss_towards_log_1_plus_k():
    pos = torch.zeros(1)
    for k in (1, 10, 100):
        loss = info_nce_from_similarities(pos, torch.zeros(1, k), 0.5)  # every candidate alike
        assert loss.item() == pytest.approx(math.log(1 + k))


# -- the explorer -----------------------------------------------------------------------------


def test_initial_state_and_widget(explorer):
    assert explorer.state == NegativesState("a", 4, "random", 0.0, 0)
    assert explorer.widget is not None and len(explorer.figure.axes) == 4 + 1 + min(explorer.n_shown, 4)  # query + its top negatives
    assert explorer.last_negatives.shape == (4,)


def test_hard_negatives_are_the_most_similar_candidates(explorer):
    explorer.set_selection("hard")
    explorer.set_k(16)
    explorer.set_query(7)
    s = explorer.similarity["a"][7].clone()
    s[7] = -math.inf
    expected = torch.topk(s, 16).indices.sort().values
    assert sorted(explorer.last_negatives.tolist()) == expected.tolist()
    assert 7 not in explorer.last_negatives
    assert np.all(np.diff(np.sort(explorer.last_similarities)[::-1]) <= 0)
    np.testing.assert_array_equal(explorer.last_false, (explorer.labels[explorer.last_negatives] == explorer.labels[7]).numpy())


def test_random_negatives_are_nested_and_shared_across_models(explorer):
    explorer.set_query(3)
    explorer.set_k(4)
    first4 = explorer.last_negatives.copy()
    explorer.set_k(16)
    assert explorer.last_negatives[:4].tolist() == first4.tolist()
    assert 3 not in explorer.last_negatives and len(set(explorer.last_negatives.tolist())) == 16
    explorer.set_model("b")
    assert explorer.last_negatives[:4].tolist() == first4.tolist()


def test_loss_and_weights_follow_the_state(explorer):
    explorer.set_query(2)
    explorer.set_selection("hard")
    explorer.set_k(4)
    s = explorer.similarity["a"]
    pos, neg = s[2, 2].view(1), s[2, torch.from_numpy(explorer.last_negatives)].view(1, -1)
    assert explorer.last_loss == pytest.approx(float(info_nce_from_similarities(pos, neg, 0.5)))
    plain = explorer.last_weights.copy()
    explorer.set_beta(1.0)
    assert explorer.last_loss == pytest.approx(float(info_nce_from_similarities(pos, neg, 0.5, hard_negative_beta=1.0)))
    assert not np.allclose(plain, explorer.last_weights)
    assert explorer.last_weights.shape == (4,)


def test_curves_and_table(explorer):
    curves = explorer.curves()
    assert set(curves) == {"random", "hard"}
    for sel in curves:
        assert set(curves[sel]) == {"loss", "false_fraction", "false_push"}
        assert all(len(v) == 3 for v in curves[sel].values())
        assert np.all(np.diff(curves[sel]["loss"]) > 0)  # more negatives, larger loss
    # the hardest candidates share the query's class far more often than random ones (3 clustered classes)
    assert curves["hard"]["false_fraction"][0] > curves["random"]["false_fraction"][0]
    rows = explorer.table()
    assert len(rows) == 6 and rows[0]["K"] == 1 and rows[1]["negatives"] == "hard"
    assert explorer.table("b", 1.0)[0]["loss"] == pytest.approx(float(explorer.curves("b", 1.0)["random"]["loss"][0]))


def test_model_summary(explorer):
    rows = explorer.model_summary()
    assert [r["model"] for r in rows] == ["a", "b"]
    for r in rows:
        assert r["positive"] > r["same class"] > r["other class"]
        assert 0 <= r["nearest is same class"] <= 1


def test_controls_follow_code_changes(explorer):
    explorer.set_model("b")
    explorer.set_k(16)
    explorer.set_selection("hard")
    explorer.set_beta(1.0)
    explorer.set_query(5)
    assert explorer.model_control.value == "b" and explorer.k_control.value == 16
    assert explorer.selection_control.value == "hard" and explorer.beta_control.value == 1.0
    assert explorer.query_control.value == 5
    explorer.k_control.value = 1  # a widget change calls the update method
    assert explorer.state.k == 1


def test_without_images_there_are_no_thumbnails():
    q, k, labels = _embeddings(0)
    ex = NegativesExplorer({"a": (q, k)}, labels, k_values=(2,), betas=(0.0,))
    assert len(ex.figure.axes) == 4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ex: ex.set_k(5), "k must be one of"),
        (lambda ex: ex.set_selection("easy"), "selection"),
        (lambda ex: ex.set_beta(3.0), "beta"),
        (lambda ex: ex.set_query(M), "query"),
        (lambda ex: ex.set_model("c"), "model"),
    ],
)
def test_bad_updates_are_explained(explorer, call, match):
    with pytest.raises(ValueError, match=match):
        call(explorer)


def test_bad_construction_is_explained():
    q, k, labels = _embeddings(0)
    with pytest.raises(ValueError, match="M - 1"):
        NegativesExplorer({"a": (q, k)}, labels, k_values=(M,))
    with pytest.raises(ValueError, match="M = 30"):
        NegativesExplorer({"a": (q[:10], k[:10])}, labels)
    with pytest.raises(ValueError, match="pair"):
        NegativesExplorer({"a": q}, labels)
