"""Tests of clcourse.losses: closed forms, per-anchor reference loops, gradients, dtypes, errors."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from clcourse import losses
from clcourse.losses import (
    NTXentLoss,
    SupConLoss,
    alignment,
    info_nce,
    mine_triplets,
    nt_xent,
    supcon,
    triplet_margin,
    uniformity,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit(x):
    return F.normalize(x.double(), dim=-1)


# --------------------------------------------------------------------------- references (loops)


def ref_nt_xent(z1, z2, t):
    """Per-anchor loop: anchor i, positive the other view, every other embedding in the denominator."""
    z = unit(torch.cat([z1, z2]))
    m, n = z.shape[0], z.shape[0] // 2
    losses = []
    for i in range(m):
        pos = (i + n) % m
        others = [k for k in range(m) if k != i]
        logits = torch.stack([z[i] @ z[k] / t for k in others])
        losses.append(torch.logsumexp(logits, 0) - z[i] @ z[pos] / t)
    return torch.stack(losses).mean()


def ref_info_nce(q, p, negs, t, beta=0.0, tau_plus=0.0):
    """Per-query loop, with Robinson et al.'s / Chuang et al.'s estimator written as in their papers."""
    q, p, negs = unit(q), unit(p), unit(negs)
    losses = []
    for i in range(q.shape[0]):
        neg_i = negs if negs.dim() == 2 else negs[i]
        k = neg_i.shape[0]
        pos = torch.exp(q[i] @ p[i] / t)
        neg = torch.exp(neg_i @ q[i] / t)
        if beta == 0 and tau_plus == 0:
            ng = neg.sum()
        else:
            imp = neg**beta  # e^{beta s / t}
            ng = (-tau_plus * k * pos + (imp * neg).sum() / imp.mean()) / (1 - tau_plus)
            ng = torch.clamp(ng, min=k * math.exp(-1 / t))
        losses.append(-torch.log(pos / (pos + ng)))
    return torch.stack(losses).mean()


def ref_supcon(x, labels, t, variant):
    """Khosla et al. eq. 2 / eq. 3 as loops over anchors and positives; anchors without positives skipped."""
    x = unit(x)
    m = x.shape[0]
    losses = []
    for i in range(m):
        positives = [p for p in range(m) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = torch.logsumexp(torch.stack([x[i] @ x[a] / t for a in range(m) if a != i]), 0)
        log_probs = torch.stack([x[i] @ x[p] / t - denom for p in positives])
        if variant == "out":
            losses.append(-log_probs.mean())
        else:
            losses.append(-torch.log(torch.exp(log_probs).mean()))
    return torch.stack(losses).mean()


def ref_distance(a, b, distance):
    return (a - b).norm() if distance == "euclidean" else 1 - a @ b


def ref_mine(x, labels, strategy, margin, distance):
    """Brute force over all (a, p, n) in index order."""
    x, labels = unit(x), labels.tolist()
    n = len(labels)
    d = [[ref_distance(x[i], x[j], distance).item() for j in range(n)] for i in range(n)]
    pos = [[p for p in range(n) if p != a and labels[p] == labels[a]] for a in range(n)]
    neg = [[k for k in range(n) if labels[k] != labels[a]] for a in range(n)]
    triplets = []
    if strategy == "all":
        triplets = [(a, p, k) for a in range(n) for p in pos[a] for k in neg[a]]
    elif strategy == "hard":
        for a in range(n):
            if pos[a] and neg[a]:
                p = max(pos[a], key=lambda j: (d[a][j], -j))  # farthest positive, lowest index on ties
                k = min(neg[a], key=lambda j: (d[a][j], j))  # nearest negative
                triplets.append((a, p, k))
    else:
        for a in range(n):
            for p in pos[a]:
                semi = [k for k in neg[a] if d[a][p] < d[a][k] < d[a][p] + margin]
                hard = [k for k in neg[a] if d[a][k] <= d[a][p]]
                if semi:
                    triplets.append((a, p, min(semi, key=lambda j: (d[a][j], j))))
                elif hard:
                    triplets.append((a, p, max(hard, key=lambda j: (d[a][j], -j))))
    return triplets


def as_triplets(indices):
    a, p, n = indices
    return list(zip(a.tolist(), p.tolist(), n.tolist()))


# --------------------------------------------------------------------------- nt_xent


@pytest.mark.parametrize("n", [2, 5])
def test_nt_xent_identical_embeddings_is_log_of_2n_minus_1(n):
    z = torch.ones(n, 3)
    assert nt_xent(z, z, 0.5).item() == pytest.approx(math.log(2 * n - 1), abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_orthogonal_samples_identical_views_closed_form(t):
    # positive similarity 1, the 2N - 2 negatives orthogonal: l = log(1 + (2N - 2) e^{-1/t})
    n = 4
    z = torch.eye(n, 6, dtype=torch.float64) * 3.0  # scale is irrelevant after normalisation
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent(z, z, t).item() == pytest.approx(expected, rel=1e-12)
    assert nt_xent(z.float(), z.float(), t).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("n", [2, 7])
def test_nt_xent_matches_per_anchor_loop(n, t):
    z1, z2 = randn(n, 5, seed=1), randn(n, 5, seed=2)
    torch.testing.assert_close(nt_xent(z1, z2, t), ref_nt_xent(z1, z2, t), rtol=1e-10, atol=1e-10)


def test_nt_xent_float32_matches_loop():
    z1, z2 = randn(16, 8, seed=3).float(), randn(16, 8, seed=4).float()
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(ref_nt_xent(z1, z2, 0.2).item(), abs=1e-5)


def test_nt_xent_gradcheck():
    z1 = randn(3, 4, seed=5).requires_grad_()
    z2 = randn(3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


def test_nt_xent_gradients_equal_autograd_of_loop():
    z1 = randn(6, 5, seed=7).requires_grad_()
    z2 = randn(6, 5, seed=8).requires_grad_()
    ours = torch.autograd.grad(nt_xent(z1, z2, 0.2) * 3.0, (z1, z2))  # upstream gradient != 1 too
    theirs = torch.autograd.grad(ref_nt_xent(z1, z2, 0.2) * 3.0, (z1, z2))
    for g, r in zip(ours, theirs):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_nt_xent_small_temperature_is_finite_and_exact():
    z1, z2 = randn(8, 16, seed=9).float(), randn(8, 16, seed=10).float()
    # one anchor opposite to everything else: every logit of its row is about -100
    z1[0] = -z2[1:].sum(0) - z1[1:].sum(0)
    z1.requires_grad_()
    z2.requires_grad_()
    loss = nt_xent(z1, z2, 0.01)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert loss.item() == pytest.approx(ref_nt_xent(z1.detach(), z2.detach(), 0.01).item(), rel=1e-5)


def test_nt_xent_no_grad_inputs_and_module_wrapper():
    z1, z2 = randn(4, 3, seed=11), randn(4, 3, seed=12)
    loss_fn = NTXentLoss(temperature=0.3)
    assert "temperature=0.3" in repr(loss_fn)
    assert loss_fn(z1, z2).item() == pytest.approx(nt_xent(z1, z2, 0.3).item())


def test_nt_xent_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = randn(32, 16, seed=13).float(), randn(32, 16, seed=14).float()
    expected = lightly_loss.NTXentLoss(temperature=0.1)(z1, z2)
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(expected.item(), abs=1e-5)


# --------------------------------------------------------------------------- dtypes


LOSSES_ON_TWO_VIEWS = {
    "nt_xent": lambda a, b: nt_xent(a, b, 0.1),
    "info_nce": lambda a, b: info_nce(a, b, b.flip(0), 0.1, hard_negative_beta=0.5, debiased_tau_plus=0.1),
    "supcon": lambda a, b: supcon(torch.stack([a, b], 1), temperature=0.1),
    "triplet": lambda a, b: triplet_margin(a, b, b.flip(0)),
    "alignment": alignment,
    "uniformity": lambda a, b: uniformity(a),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOSSES_ON_TWO_VIEWS)
def test_half_precision_inputs_compute_in_float32(name, dtype):
    fn = LOSSES_ON_TWO_VIEWS[name]
    a = randn(8, 16, seed=15).to(dtype).requires_grad_()
    b = randn(8, 16, seed=16).to(dtype).requires_grad_()
    loss = fn(a, b)
    assert loss.dtype == torch.float32
    # the same rounded inputs given as float32 give the same value: the softmax runs in float32
    assert loss.item() == pytest.approx(fn(a.detach().float(), b.detach().float()).item(), abs=1e-6)
    loss.backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad.float()).all()


# --------------------------------------------------------------------------- info_nce


@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("beta,tau_plus", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (0.5, 0.1), (2.0, 0.3)])
def test_info_nce_matches_loop(per_query, beta, tau_plus):
    n, k, d = 6, 9, 5
    q, p = randn(n, d, seed=17), randn(n, d, seed=18)
    negs = randn(n, k, d, seed=19) if per_query else randn(k, d, seed=19)
    q.requires_grad_()
    negs.requires_grad_()
    got = info_nce(q, p, negs, 0.2, hard_negative_beta=beta, debiased_tau_plus=tau_plus)
    expected = ref_info_nce(q, p, negs, 0.2, beta, tau_plus)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for g, r in zip(torch.autograd.grad(got, (q, negs)), torch.autograd.grad(expected, (q, negs))):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)


def test_info_nce_zero_options_are_plain_cross_entropy():
    q, p, negs = randn(5, 4, seed=20), randn(5, 4, seed=21), randn(7, 4, seed=22)
    logits = torch.cat([(unit(q) * unit(p)).sum(1, keepdim=True), unit(q) @ unit(negs).t()], 1) / 0.1
    expected = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert info_nce(q, p, negs, 0.1).item() == pytest.approx(expected.item(), rel=1e-12)
    explicit = info_nce(q, p, negs, 0.1, hard_negative_beta=0.0, debiased_tau_plus=0.0)
    assert explicit.item() == expected.item()


def test_info_nce_orthogonal_negatives_closed_form():
    # query = positive, K negatives orthogonal to it: l = log(1 + K e^{-1/t})
    q = torch.eye(1, 6)
    negs = torch.eye(6)[1:]
    assert info_nce(q, q, negs, 0.5).item() == pytest.approx(math.log(1 + 5 * math.exp(-2)), rel=1e-6)


def test_info_nce_debiased_clamp_is_active_and_matches_loop():
    # tau+ close to 1 with a strong positive drives the estimate below K e^{-1/t}: clamped
    q = randn(4, 6, seed=23)
    p = q + 0.01 * randn(4, 6, seed=24)
    negs = randn(10, 6, seed=25)
    got = info_nce(q, p, negs, 0.5, debiased_tau_plus=0.9)
    torch.testing.assert_close(got, ref_info_nce(q, p, negs, 0.5, 0.0, 0.9), rtol=1e-10, atol=1e-10)
    # with Ng at its floor K e^{-1/t}: l = log(1 + K e^{-1/t} / pos)
    pos = (unit(q) * unit(p)).sum(1) / 0.5
    floor = torch.log1p(10 * math.exp(-2) / torch.exp(pos)).mean()
    assert got.item() == pytest.approx(floor.item(), rel=1e-9)


@pytest.mark.parametrize("beta,tau_plus", [(0.0, 0.0), (1.0, 0.1)])
def test_info_nce_small_temperature_is_finite(beta, tau_plus):
    q, p, negs = randn(8, 16, seed=26).float(), randn(8, 16, seed=27).float(), randn(32, 16, seed=28).float()
    q.requires_grad_()
    loss = info_nce(q, p, negs, 0.01, hard_negative_beta=beta, debiased_tau_plus=tau_plus)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    expected = ref_info_nce(q.detach(), p, negs, 0.01, beta, tau_plus)  # float64: e^{100} fits
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


# --------------------------------------------------------------------------- triplets


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_margin_matches_loop(distance):
    a, p, n = randn(7, 5, seed=29), randn(7, 5, seed=30), randn(7, 5, seed=31)
    expected = torch.stack([
        torch.clamp(ref_distance(x, y, distance) - ref_distance(x, z, distance) + 0.3, min=0)
        for x, y, z in zip(unit(a), unit(p), unit(n))
    ]).mean()
    torch.testing.assert_close(triplet_margin(a, p, n, 0.3, distance=distance), expected)


def test_triplet_margin_collapse_costs_the_margin_with_finite_gradients():
    z = torch.ones(4, 3, requires_grad=True)
    loss = triplet_margin(z, z, z, margin=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.2)
    assert torch.isfinite(z.grad).all()


def test_triplet_margin_without_triplets_is_a_differentiable_zero():
    z = randn(5, 4, seed=32).requires_grad_()
    a, p, n = mine_triplets(z, torch.arange(5), "hard")  # all labels distinct: nothing to mine
    assert len(a) == 0
    loss = triplet_margin(z[a], z[p], z[n])
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("strategy,margin", [("all", 0.2), ("hard", 0.2), ("semi-hard", 0.05), ("semi-hard", 0.3), ("semi-hard", 1.0)])
def test_mine_triplets_matches_brute_force(strategy, margin, distance):
    x = randn(14, 3, seed=33)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 0, 2, 1, 4, 0])  # labels 3 and 4 have no positive
    got = as_triplets(mine_triplets(x, labels, strategy, margin, distance=distance))
    assert got == ref_mine(x, labels, strategy, margin, distance)


def test_mine_all_returns_every_valid_triplet():
    labels = torch.tensor([0, 0, 1, 1, 1])
    got = set(as_triplets(mine_triplets(randn(5, 2, seed=34), labels, "all")))
    valid = {(a, p, n) for a, p, n in itertools.permutations(range(5), 3)
             if labels[a] == labels[p] and labels[n] != labels[a]}
    assert got == valid and len(valid) == 2 * 3 + 6 * 2


def _circle(*angles):
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)


def test_semi_hard_picks_nearest_negative_inside_the_margin():
    # anchor at 0 rad, positive at 0.5; negatives at 0.3 (hard), 0.7 and 0.6 (semi-hard), 3.0 (easy)
    x, labels = _circle(0.0, 0.5, 0.3, 0.7, 0.6, 3.0), torch.tensor([0, 0, 1, 1, 1, 1])
    triplets = as_triplets(mine_triplets(x, labels, "semi-hard", margin=0.5, distance="cosine"))
    assert [t for t in triplets if t[:2] == (0, 1)] == [(0, 1, 4)]


def test_semi_hard_fallback_takes_the_least_hard_negative():
    # no negative inside (d(a,p), d(a,p) + margin): of the hard ones (0.2, 0.3) take the farther
    x, labels = _circle(0.0, 0.5, 0.2, 0.3, 3.0), torch.tensor([0, 0, 1, 1, 1])
    triplets = as_triplets(mine_triplets(x, labels, "semi-hard", margin=0.05, distance="cosine"))
    assert [t for t in triplets if t[:2] == (0, 1)] == [(0, 1, 3)]


def test_semi_hard_drops_pairs_whose_negatives_are_all_easy():
    x, labels = _circle(0.0, 0.1, 3.0, 3.1), torch.tensor([0, 0, 1, 1])
    triplets = as_triplets(mine_triplets(x, labels, "semi-hard", margin=0.1))
    assert [t for t in triplets if t[0] in (0, 1)] == []


# --------------------------------------------------------------------------- supcon


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_flat_matches_loop(variant):
    x = randn(12, 5, seed=35)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 3, 1, 2, 4])  # 3 and 4: anchors without positives
    torch.testing.assert_close(supcon(x, labels, 0.2, variant), ref_supcon(x, labels, 0.2, variant))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_multiview_matches_loop(variant):
    z = randn(5, 3, 4, seed=36)  # N=5 samples, V=3 views
    labels = torch.tensor([0, 1, 0, 2, 1])
    flat, flat_labels = z.transpose(0, 1).reshape(15, 4), labels.repeat(3)
    torch.testing.assert_close(supcon(z, labels, 0.3, variant), ref_supcon(flat, flat_labels, 0.3, variant))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_instance_discrimination_equals_nt_xent(variant):
    z1, z2 = randn(6, 4, seed=37), randn(6, 4, seed=38)
    z = torch.stack([z1, z2], 1)
    expected = nt_xent(z1, z2, 0.2)
    torch.testing.assert_close(supcon(z, None, 0.2, variant), expected)
    torch.testing.assert_close(supcon(z, torch.arange(10, 16), 0.2, variant), expected)  # all distinct
    torch.testing.assert_close(SupConLoss(0.2, variant)(z), expected)


def test_supcon_variants_differ_with_several_positives():
    z, labels = randn(5, 2, 4, seed=39), torch.tensor([0, 0, 1, 1, 1])
    assert supcon(z, labels, variant="out").item() > supcon(z, labels, variant="in").item()  # Jensen


# --------------------------------------------------------------------------- alignment, uniformity


def test_alignment_and_uniformity_match_wang_isola():
    x, y = randn(10, 6, seed=40), randn(10, 6, seed=41)
    ux, uy = unit(x), unit(y)
    torch.testing.assert_close(alignment(x, y), (ux - uy).norm(dim=1).pow(2).mean())
    torch.testing.assert_close(alignment(x, y, alpha=1), (ux - uy).norm(dim=1).mean())
    torch.testing.assert_close(uniformity(x), torch.pdist(ux).pow(2).mul(-2).exp().mean().log())
    torch.testing.assert_close(uniformity(x, t=0.5), torch.pdist(ux).pow(2).mul(-0.5).exp().mean().log())


def test_collapsed_embeddings_are_aligned_and_not_uniform_with_finite_gradients():
    z = torch.ones(6, 3, requires_grad=True)
    a, u = alignment(z, z), uniformity(z)
    (a + u).backward()
    assert a.item() == pytest.approx(0.0) and u.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------- bad input


Z = randn(8, 16, dtype=torch.float32)
LABELS = torch.arange(8) % 3

BAD_INPUTS = {
    "nt_xent shapes": (lambda: nt_xent(Z, randn(8, 32)), ["same shape [N, D]", "[8, 16]", "[8, 32]"]),
    "nt_xent temperature 0": (lambda: nt_xent(Z, Z, 0.0), ["temperature", "> 0", "got 0.0"]),
    "nt_xent temperature < 0": (lambda: nt_xent(Z, Z, -0.5), ["temperature", "got -0.5"]),
    "nt_xent temperature nan": (lambda: nt_xent(Z, Z, float("nan")), ["temperature", "finite", "nan"]),
    "nt_xent one pair": (lambda: nt_xent(Z[:1], Z[:1]), ["at least 2 pairs", "N = 1"]),
    "nt_xent integers": (lambda: nt_xent(Z.long(), Z.long()), ["floating-point", "torch.int64"]),
    "nt_xent rank": (lambda: nt_xent(Z[0], Z[0]), ["2-D [N, D]", "[16]"]),
    "nt_xent no features": (lambda: nt_xent(Z[:, :0], Z[:, :0]), ["D >= 1", "[8, 0]"]),
    "info_nce negatives dim": (lambda: info_nce(Z, Z, randn(5, 4)), ["[K, 16]", "[8, K, 16]", "[5, 4]"]),
    "info_nce negatives per query": (lambda: info_nce(Z, Z, randn(3, 5, 16)), ["[8, K, 16]", "[3, 5, 16]"]),
    "info_nce negatives rank": (lambda: info_nce(Z, Z, randn(16)), ["[K, 16] (shared) or [8, K, 16]", "[16]"]),
    "info_nce no negatives": (lambda: info_nce(Z, Z, randn(0, 16)), ["K >= 1", "[0, 16]"]),
    "info_nce positive shape": (lambda: info_nce(Z, Z[:4], Z), ["query and positive", "[8, 16]", "[4, 16]"]),
    "info_nce tau_plus": (lambda: info_nce(Z, Z, Z, debiased_tau_plus=1.0), ["debiased_tau_plus", "[0, 1)", "1.0"]),
    "info_nce beta": (lambda: info_nce(Z, Z, Z, hard_negative_beta=-1), ["hard_negative_beta", ">= 0", "-1.0"]),
    "info_nce int": (lambda: info_nce(Z, Z, Z.int()), ["negatives", "floating-point", "torch.int32"]),
    "triplet shapes": (lambda: triplet_margin(Z, Z, Z[:, :4]), ["same shape [T, D]", "[8, 4]"]),
    "triplet margin": (lambda: triplet_margin(Z, Z, Z, margin=-0.1), ["margin", ">= 0", "-0.1"]),
    "triplet distance": (lambda: triplet_margin(Z, Z, Z, distance="manhattan"), ["'euclidean', 'cosine'", "'manhattan'"]),
    "mine labels length": (lambda: mine_triplets(Z, LABELS[:7]), ["labels must have shape [8]", "[7]"]),
    "mine labels float": (lambda: mine_triplets(Z, LABELS.float()), ["integer", "torch.float32"]),
    "mine strategy": (lambda: mine_triplets(Z, LABELS, "hardest"), ["'all', 'hard', 'semi-hard'", "'hardest'"]),
    "mine one sample": (lambda: mine_triplets(Z[:1], LABELS[:1]), ["at least 2", "[1, 16]"]),
    "supcon labels length": (lambda: supcon(Z, LABELS[:5]), ["labels must have shape [8]", "[5]"]),
    "supcon multiview labels": (lambda: supcon(Z.view(4, 2, 16), LABELS), ["labels must have shape [4]", "[8]"]),
    "supcon flat without labels": (lambda: supcon(Z), ["[N, V, D]", "[8, 16]"]),
    "supcon rank": (lambda: supcon(Z.view(2, 2, 2, 16)), ["[N, V, D] or [M, D]", "[2, 2, 2, 16]"]),
    "supcon variant": (lambda: supcon(Z, LABELS, variant="both"), ["'out', 'in'", "'both'"]),
    "supcon no positives": (lambda: supcon(Z, torch.arange(8)), ["at least one anchor with a positive", "8 distinct"]),
    "supcon one sample": (lambda: supcon(Z[:1].view(1, 1, 16)), ["at least 2", "[1, 1, 16]"]),
    "supcon temperature": (lambda: supcon(Z, LABELS, temperature=0), ["temperature", "got 0.0"]),
    "alignment shapes": (lambda: alignment(Z, Z[:3]), ["same shape", "[3, 16]"]),
    "alignment alpha": (lambda: alignment(Z, Z, alpha=0), ["alpha", "> 0", "0.0"]),
    "uniformity one sample": (lambda: uniformity(Z[:1]), ["at least 2", "[1, 16]"]),
    "uniformity t": (lambda: uniformity(Z, t=-1), ["t must be", "-1.0"]),
    "NTXentLoss temperature": (lambda: NTXentLoss(temperature=0), ["temperature", "got 0.0"]),
    "SupConLoss variant": (lambda: SupConLoss(variant="sum"), ["'out', 'in'", "'sum'"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_value_error_saying_what_was_expected(case):
    call, fragments = BAD_INPUTS[case]
    with pytest.raises(ValueError) as error:
        call()
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} not in {str(error.value)!r}"


@pytest.mark.parametrize("call", [
    lambda: nt_xent([[1.0, 2.0]], Z),
    lambda: mine_triplets(Z, [0] * 8),
    lambda: nt_xent(Z, Z, temperature="0.5"),
])
def test_wrong_types_raise_type_error(call):
    with pytest.raises(TypeError, match="must be"):
        call()


@pytest.mark.parametrize("name", ["nt_xent", "info_nce", "supcon"])
def test_losses_stay_float32_under_autocast(name):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    negatives = torch.randn(32, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    call = {
        "nt_xent": lambda: nt_xent(z1, z2, 0.1),
        "info_nce": lambda: info_nce(z1, z2, negatives, 0.1),
        "supcon": lambda: supcon(torch.stack([z1, z2], 1), labels, 0.1),
    }[name]
    reference = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = call()
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference)


# --------------------------------------------------------------------------- listing all triplets


def test_mine_all_lists_large_batches_block_by_block_in_order():
    labels = torch.arange(300) % 7
    a, p, n = mine_triplets(randn(300, 3, seed=40), labels, "all")  # more anchors than one block of 2**24 / N^2
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    valid = (same & ~torch.eye(300, dtype=torch.bool)).unsqueeze(2) & (~same).unsqueeze(1)
    expected = valid.nonzero(as_tuple=True)
    assert all(torch.equal(got, want) for got, want in zip((a, p, n), expected))


def test_mine_all_refuses_more_triplets_than_it_can_list(monkeypatch):
    labels = torch.arange(40) % 4  # 40 * 9 * 30 = 10,800 valid triplets
    monkeypatch.setattr(losses, "MAX_LISTED_TRIPLETS", 10_000)
    with pytest.raises(ValueError, match=r"10,800 valid triplets.*all_triplets_loss"):
        mine_triplets(randn(40, 3, seed=41), labels, "all")
    assert len(mine_triplets(randn(40, 3, seed=41), labels, "hard")[0]) == 40  # the other strategies still work


def _clustering_loop(features, labels, prototypes, margin, valid):
    """ORE eq. 1-2, one feature and one prototype at a time, in float64."""
    total = 0.0
    for f, c in zip(features.double(), labels.tolist()):
        for i, p in enumerate(prototypes.double()):
            if not valid[i]:
                continue
            distance = torch.linalg.vector_norm(f - p)
            total += distance if i == c else torch.clamp(margin - distance, min=0.0)
    return total / len(features)


def test_contrastive_clustering_matches_a_loop_and_its_closed_forms():
    from clcourse.losses import contrastive_clustering

    g = torch.Generator().manual_seed(0)
    features, prototypes = torch.randn(9, 5, generator=g) * 3, torch.randn(4, 5, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    valid = torch.tensor([True, False, True, True])
    for margin, mask in ((10.0, None), (2.0, valid)):
        expected = _clustering_loop(features, labels, prototypes, margin, torch.ones(4, dtype=torch.bool)
                                    if mask is None else mask)
        got = contrastive_clustering(features, labels, prototypes, margin, valid=mask)
        torch.testing.assert_close(got.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    corners = torch.eye(3) * 20  # prototypes 20 * sqrt(2) apart: beyond a margin of 10
    assert contrastive_clustering(corners, torch.arange(3), corners).item() == pytest.approx(0.0, abs=1e-5)
    # on a line: prototypes at 0 and 4, features at 1 (class 0) and 3 (class 1): each 1 from its own prototype
    # and 3 from the other, so each term is 1 + (10 - 3) = 8
    line = contrastive_clustering(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 1]), torch.tensor([[0.0], [4.0]]))
    assert line.item() == pytest.approx(8.0)


def test_contrastive_clustering_gradients_and_bad_input():
    from clcourse.losses import contrastive_clustering

    features = torch.randn(6, 4, requires_grad=True)
    prototypes = torch.randn(3, 4)
    contrastive_clustering(features, torch.tensor([0, 1, 2, 0, 1, 2]), prototypes).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    empty = contrastive_clustering(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), prototypes)
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match=r"prototypes must be \[C, 4\]"):
        contrastive_clustering(features, torch.zeros(6, dtype=torch.long), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\)"):
        contrastive_clustering(features, torch.tensor([0, 1, 2, 3, 0, 1]), prototypes)
    with pytest.raises(ValueError, match="margin"):
        contrastive_clustering(features, torch.zeros(6, dtype=torch.long), prototypes, margin=0.0)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        contrastive_clustering(features, torch.zeros(6, dtype=torch.long), prototypes, valid=torch.ones(3))


# --------------------------------------------------------------------------- CLIP's symmetric InfoNCE


def _clip_loop(images, texts, t):
    """Both directions written out, one anchor at a time."""
    s = unit(images) @ unit(texts).T
    n = len(s)
    rows = [-(s[i, i] / t - torch.logsumexp(s[i] / t, 0)) for i in range(n)]
    columns = [-(s[j, j] / t - torch.logsumexp(s[:, j] / t, 0)) for j in range(n)]
    return (torch.stack(rows).mean() + torch.stack(columns).mean()) / 2


def test_clip_loss_is_both_directions_of_the_similarity_matrix():
    from clcourse.losses import clip_loss, paired_info_nce

    images, texts = randn(7, 5, seed=1), randn(7, 5, seed=2)
    torch.testing.assert_close(clip_loss(images, texts, 0.2), _clip_loop(images, texts, 0.2))
    torch.testing.assert_close(clip_loss(images, texts, 0.2),
                               (paired_info_nce(images, texts, 0.2) + paired_info_nce(texts, images, 0.2)) / 2)
    # swapping the modalities transposes S and leaves the loss unchanged; one direction alone does not
    torch.testing.assert_close(clip_loss(texts, images, 0.2), clip_loss(images, texts, 0.2))
    assert not torch.allclose(paired_info_nce(images, texts, 0.2), paired_info_nce(texts, images, 0.2))


def test_clip_loss_closed_forms():
    from clcourse.losses import clip_loss

    same = torch.ones(6, 3)
    torch.testing.assert_close(clip_loss(same, same, 0.07), torch.tensor(math.log(6)))  # all N candidates alike
    one_hot = torch.eye(4)
    assert clip_loss(one_hot, one_hot, 0.01) < 1e-6
    t = 0.5
    orthogonal = clip_loss(torch.ones(3, 2), torch.tensor([[1.0, -1.0]] * 3), t)  # every similarity 0
    torch.testing.assert_close(orthogonal, torch.tensor(math.log(3.0)))
    images, texts = torch.eye(3, 4, dtype=torch.float64), torch.eye(3, 4, dtype=torch.float64)
    expected = math.log(math.e ** (1 / t) + 2) - 1 / t  # diagonal 1, off-diagonal 0: log(e^{1/t} + N - 1) - 1/t
    torch.testing.assert_close(clip_loss(images, texts, t), torch.tensor(expected, dtype=torch.float64))


def test_clip_loss_learnable_temperature_gets_a_gradient():
    from clcourse.losses import clip_loss

    images, texts = randn(5, 4, seed=3, dtype=torch.float32), randn(5, 4, seed=4, dtype=torch.float32)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = clip_loss(images, texts, torch.exp(-log_scale))
    torch.testing.assert_close(loss, clip_loss(images, texts, 0.07))
    loss.backward()
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad) and log_scale.grad != 0


def test_clip_loss_bad_input():
    from clcourse.losses import clip_loss

    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        clip_loss(x[:1], x[:1])
    with pytest.raises(ValueError, match="floating-point"):
        clip_loss(x.long(), x)
    with pytest.raises(ValueError, match="temperature"):
        clip_loss(x, x, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        clip_loss(x, x, torch.tensor(-0.1))
    with pytest.raises(ValueError, match="one-element"):
        clip_loss(x, x, torch.tensor([0.1, 0.2]))
