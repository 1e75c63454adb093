"""Lesson 16 tasks: SSCL's contrastive loss with in-batch negatives, and a derivation of how much attention the
smooth self-attention can give a few words.

[1] Shi et al., A Simple and Effective Self-Supervised Contrastive Learning Framework for Aspect Detection
    (SSCL), AAAI 2021.
[2] He et al., An Unsupervised Neural Attention Model for Aspect Extraction (ABAE), ACL 2017.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from clcourse.grading.harness import (
    Case,
    Failure,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    keeps_gradient,
    probe,
    require_same_gradient,
    run_case_probe,
)
from clcourse.grading.registry import task
from clcourse.methods.sscl import SentenceEncoder, sentence_contrast

# --- 16.contrast -----------------------------------------------------------------------------


def _contrast_reference(reconstructions: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
    """SSCL's loss as clcourse.methods.SSCL trains it: r [B, D], z [B, D] -> the mean over s of
    -cos(r_s, z_s) + log sum_{n != s} exp(cos(r_s, z_n)), a scalar."""
    return sentence_contrast(reconstructions, sentences)


def _contrast_variant(r, z, *, normalize=True, negatives="sentences", transpose=False, positive_sign=-1.0,
                      keep_positive=False, diagonal=float("-inf"), pool="logsumexp", reduction="mean"):
    """The loss with one slip (the defaults compute the reference).

    normalize: cosines (False: dot products). negatives: "sentences" (z_n) or "reconstructions" (r_n).
    transpose: row s compares z_s with the other reconstructions r_n. positive_sign: -1 subtracts the positive.
    keep_positive: the positive stays inside the log-sum-exp. diagonal: what the positive's place holds in the
    pool when it is not kept (-inf removes it). pool: "logsumexp", "log_mean_exp", "mean", "max" or "sum_exp".
    reduction: "mean" or "sum" over the batch.
    """
    a = F.normalize(r, dim=1) if normalize else r
    b = F.normalize(z, dim=1) if normalize else z
    similarity = a @ b.t()  # [B, B]: row s holds r_s against every z_n
    positive = similarity.diagonal()
    if negatives == "reconstructions":
        similarity = a @ a.t()
    if transpose:
        similarity = similarity.t()
    eye = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    pooled_in = similarity if keep_positive else similarity.masked_fill(eye, diagonal)
    count = len(similarity) - (0 if keep_positive else 1)
    if pool == "logsumexp":
        pooled = torch.logsumexp(pooled_in, dim=1)
    elif pool == "log_mean_exp":
        pooled = torch.logsumexp(pooled_in, dim=1) - math.log(count)
    elif pool == "sum_exp":
        pooled = pooled_in.exp().sum(dim=1)
    elif pool == "max":
        pooled = pooled_in.max(dim=1).values
    else:  # "mean" of the similarities of the negatives
        pooled = similarity.masked_fill(eye, 0.0).sum(dim=1) / count
    per_sentence = positive_sign * positive + pooled
    return per_sentence.mean() if reduction == "mean" else per_sentence.sum()


def _hinge(r, z, margin=1.0):
    """ABAE's max-margin loss with the batch as negatives: mean over s of sum_{n != s} max(0, margin - cos(r_s,
    z_s) + cos(r_s, z_n))."""
    return sentence_contrast(r, z, margin=margin)


_CONTRAST_MISTAKES = [
    Mistake("The vectors are not normalised: SSCL compares directions, cos(r_s, z_n) = r_s . z_n / (|r_s| |z_n|). "
            "Normalise both, F.normalize(x, dim=1), before the product.",
            lambda r, z: _contrast_variant(r, z, normalize=False)),
    Mistake("The positive is inside the log-sum-exp (the cross-entropy of InfoNCE): SSCL's sum runs over the "
            "other sentences only, n != s. Mask the diagonal with -inf before torch.logsumexp.",
            lambda r, z: _contrast_variant(r, z, keep_positive=True)),
    Mistake("The diagonal was masked with 0, but exp(0) = 1 still counts in the sum: fill it with -inf (or drop "
            "it), so that only the other sentences n != s are summed.",
            lambda r, z: _contrast_variant(r, z, diagonal=0.0)),
    Mistake("The negatives were taken from the other reconstructions, cos(r_s, r_n): they are the other "
            "*sentences*, cos(r_s, z_n). The reconstruction of s must be nearer to its own sentence than to the "
            "sentences of the batch.", lambda r, z: _contrast_variant(r, z, negatives="reconstructions")),
    Mistake("Rows and columns are swapped: row s of the similarity matrix must hold r_s against every z_n "
            "(normalize(r) @ normalize(z).T); yours compares z_s with the other reconstructions r_n.",
            lambda r, z: _contrast_variant(r, z, transpose=True)),
    Mistake("The sign of the positive is flipped: the loss subtracts cos(r_s, z_s), so that a reconstruction near "
            "its own sentence lowers it.", lambda r, z: _contrast_variant(r, z, positive_sign=1.0)),
    Mistake("The sentences' losses are summed: SSCL takes their mean over the batch.",
            lambda r, z: _contrast_variant(r, z, reduction="sum")),
    Mistake("The negatives' similarities were averaged: the loss takes their log-sum-exp, log sum_{n != s} "
            "exp(cos(r_s, z_n)), a soft maximum that weighs the nearest negatives most.",
            lambda r, z: _contrast_variant(r, z, pool="mean")),
    Mistake("That is the log of the *mean* of exp(cos(r_s, z_n)): the loss takes the log of their sum, which is "
            "larger by log(B - 1).", lambda r, z: _contrast_variant(r, z, pool="log_mean_exp")),
    Mistake("The hard maximum over the negatives was taken: the loss uses the soft maximum, log sum_{n != s} "
            "exp(cos(r_s, z_n)) (torch.logsumexp), which every negative feeds.",
            lambda r, z: _contrast_variant(r, z, pool="max")),
    Mistake("The log is missing: the loss is -cos(r_s, z_s) + log sum_{n != s} exp(cos(r_s, z_n)).",
            lambda r, z: _contrast_variant(r, z, pool="sum_exp")),
    Mistake("That is ABAE's max-margin loss, sum_n max(0, 1 - cos(r_s, z_s) + cos(r_s, z_n)): SSCL replaces the "
            "hinge by -cos(r_s, z_s) + log sum_{n != s} exp(cos(r_s, z_n)).", _hinge),
]


def _contrast_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(160))
    rng = random.Random(case_seed(161))

    def pair(b, d, dtype=torch.float32, scale=1.0, near=0.5):
        """Sentence vectors z and reconstructions r = z + noise, each row of its own length."""
        z = torch.randn(b, d, generator=g, dtype=torch.float64)
        r = z + near * torch.randn(b, d, generator=g, dtype=torch.float64)
        lengths = torch.empty(b, 1, dtype=torch.float64).uniform_(0.3, 3.0, generator=g)
        return (scale * lengths * r).to(dtype), (scale * z).to(dtype)

    r8, z8 = pair(8, 16)
    same = torch.randn(1, 6, generator=g).expand(5, 6).clone()
    z4 = torch.randn(4, 7, generator=g)
    b, d = rng.randint(3, 12), rng.randint(4, 24)
    return [
        Case("B=8, D=16, reconstructions and sentence vectors that both require gradients",
             (r8.requires_grad_(), z8.requires_grad_())),
        Case("B=4, D=8, reconstructions near their sentences", pair(4, 8)),
        Case("B=2 (the smallest batch: one negative each), D=5", pair(2, 5)),
        Case("B=6, D=8, vectors of norm around 20 (not unit vectors)", pair(6, 8, scale=12.0)),
        Case("B=5, every sentence vector the same (a collapsed encoder), random reconstructions",
             (torch.randn(5, 6, generator=g), same)),
        Case("B=4, reconstructions equal to their sentences", (z4.clone(), z4)),
        Case("B=6, D=4, float64 (keep the dtype)", pair(6, 4, dtype=torch.float64)),
        Case(f"B={b}, D={d}, reconstructions far from their sentences", pair(b, d, near=3.0)),
    ]


@probe
def _contrast_gradients(answer, reconstructions, sentences):
    """Run ``answer`` on leaf copies of r [B, D] and z [B, D]; return (the gradients of its output with respect
    to r and to z, or None when the output is not a scalar tensor in their graph)."""
    r = reconstructions.detach().clone().requires_grad_()
    z = sentences.detach().clone().requires_grad_()
    loss = call_answer(answer, (r, z), {}, "")
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
        return None
    grads = torch.autograd.grad(loss.reshape(()), (r, z), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip((r, z), grads)]


def _reference_gradients(reconstructions, sentences):
    r = reconstructions.detach().clone().requires_grad_()
    z = sentences.detach().clone().requires_grad_()
    return list(torch.autograd.grad(_contrast_reference(r, z), (r, z)))


_CONTRAST_GRADIENT_HINT = ("The loss has the right value but not the right gradient: part of it is cut from the "
                           "graph (.detach(), .data, .item(), torch.no_grad()). In SSCL both the reconstructions "
                           "and the sentence vectors are trained through this loss (the sentence vectors through "
                           "the attention), so the gradient must reach both, the negatives included.")


def _check_contrast_gradients(answer, cases: list[Case]) -> None:
    """On the cases whose inputs require gradients, the answer's gradients with respect to r and z must be the
    reference's (run where the answer runs, also when grading)."""
    for case in cases:
        if not all(x.requires_grad for x in case.args):
            continue
        args, _ = case.fresh()
        got = run_case_probe(answer, case, _contrast_gradients, *(x.detach() for x in args))
        if got is None:
            raise Failure(case.name, "the loss is cut off from the inputs' graph", hint=_CONTRAST_GRADIENT_HINT)
        expected = _reference_gradients(*args)
        require_same_gradient(case, got, expected, "the reconstructions and the sentence vectors",
                              _CONTRAST_GRADIENT_HINT, rtol=1e-4, atol=1e-6)


@task("16.contrast", "SSCL's contrastive loss: reconstructions against their sentences, the batch's other "
                     "sentences as negatives", 2, answer="contrast")
def check_contrast(answer) -> None:
    """Compare with clcourse.methods.sscl.sentence_contrast, then the gradients with respect to both inputs."""
    cases = _contrast_cases()
    compare_with_reference(
        answer, cases, _contrast_reference, _CONTRAST_MISTAKES,
        generic_hint="cosine = normalize(r) @ normalize(z).T (row s: r_s against every z_n); the positive is its "
                     "diagonal; the negatives are the rest of the row: loss = mean over s of -cosine[s, s] + "
                     "logsumexp over n != s of cosine[s, n] (mask the diagonal with -inf).",
        properties=[keeps_gradient],
        error_hints=[(r"mat1 and mat2 shapes cannot be multiplied",
                      "r and z are both [B, D]: the similarities of every r_s with every z_n are r @ z.T ([B, B])."),
                     (r"masked_fill only supports boolean masks",
                      "The mask must be a bool tensor, e.g. torch.eye(B, dtype=torch.bool)."),
                     (r"leaf Variable that requires grad.*in-place",
                      "Use out-of-place operations (F.normalize(x, dim=1), or x / x.norm(dim=1, keepdim=True)), not "
                      "x /= ... or x.div_(...): the caller still needs its tensors, and autograd cannot go back "
                      "through an input changed in place.")],
    )
    _check_contrast_gradients(answer, cases)


# --- 16.attention_cap ------------------------------------------------------------------------


def _cap_closed_form(smooth: float, length: int, k: int) -> float:
    """The largest share of the attention that k of a sentence's L words can take together: their logits
    lambda * tanh(d) at most lambda, the other L - k words' at least -lambda, so k e^lambda / (k e^lambda +
    (L - k) e^-lambda) = k / (k + (L - k) e^(-2 lambda)). A supremum: tanh never reaches +-1."""
    return k / (k + (length - k) * math.exp(-2.0 * smooth))


def _cap_reached(smooth: float, length: int, k: int) -> float:
    """The share SSCL's SentenceEncoder gives k words of an L-word sentence when its kernel M pushes their logits
    to the top (tanh(50) = 1 in float) and the other words' to the bottom."""
    vectors = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # padding, the k words, the others
    encoder = SentenceEncoder(vectors, smooth)
    with torch.no_grad():
        # y^T (M e + b) with y = (k e_1 + (L - k) e_2) / L and M = 50 [[1, -1], [1, -1]], b = 0: +50 for the
        # k words and -50 for the others, whatever k and L
        encoder.kernel.weight.copy_(50.0 * torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        encoder.kernel.bias.zero_()
        ids = torch.tensor([[1] * k + [2] * (length - k)])
        attention, _ = encoder.attend(ids)
    return float(attention[0, :k].sum())


def _cap_reference(smooth: float, length: int, k: int) -> float:
    """The closed form, after checking that SSCL's encoder reaches it."""
    closed = _cap_closed_form(smooth, length, k)
    reached = _cap_reached(smooth, length, k)
    if not math.isclose(reached, closed, rel_tol=1e-5, abs_tol=1e-6):
        raise RuntimeError(f"SentenceEncoder gives k={k} of L={length} words at most {reached:.6g} with smooth "
                           f"{smooth}, the closed form {closed:.6g}")
    return closed


def _cap_variant(smooth, length, k, *, gap=2.0, others="rest", per_word=False, only_one=False, sign=-1.0):
    """The share with one slip (the defaults compute the closed form).

    gap: the logit gap between the k words and the others, in units of lambda. others: "rest" (L - k words) or
    "all" (L). per_word: the share of one of the k words. only_one: k taken as 1. sign: -1 for the largest share,
    +1 for the smallest.
    """
    k = 1 if only_one else k
    rest = length - k if others == "rest" else length
    share = k / (k + rest * math.exp(sign * gap * smooth))
    return share / k if per_word else share


_CAP_MISTAKES = [
    Mistake("The gap is lambda, not 2 lambda: lambda * tanh(d) runs from -lambda to +lambda, so the k words can "
            "sit at +lambda while the others sit at -lambda, e^(2 lambda) apart.",
            lambda s, n, k: _cap_variant(s, n, k, gap=1.0)),
    Mistake("The sum counts all L words against the k: only the other L - k words take what the k leave, k / (k "
            "+ (L - k) e^(-2 lambda)).", lambda s, n, k: _cap_variant(s, n, k, others="all")),
    Mistake("k was taken as 1: that is the most one word can take. With k words at the top the share is k / (k "
            "+ (L - k) e^(-2 lambda)).", lambda s, n, k: _cap_variant(s, n, k, only_one=True)),
    Mistake("That is the share of *one* of the k words: the task asks for the k words together, k times as much.",
            lambda s, n, k: _cap_variant(s, n, k, per_word=True)),
    Mistake("That is the *smallest* share the k words can get (them at -lambda, the others at +lambda): the "
            "largest puts the k words at the top, k / (k + (L - k) e^(-2 lambda)).",
            lambda s, n, k: _cap_variant(s, n, k, sign=1.0)),
    Mistake("The smoothness was ignored: k / L is the share of uniform attention (lambda = 0). With lambda > 0 "
            "the k words can take more, up to k / (k + (L - k) e^(-2 lambda)).",
            lambda s, n, k: k / n),
    Mistake("e^(2 lambda) is the largest ratio of two words' weights, not a share: turn it into the k words' "
            "share of the whole softmax.", lambda s, n, k: math.exp(2.0 * s)),
    Mistake("1 is what an attention without the tanh could give (its logits are unbounded): lambda * tanh(d) "
            "keeps every logit in [-lambda, lambda].", lambda s, n, k: 1.0),
]


def _cap_cases() -> list[Case]:
    rng = random.Random(case_seed(162))
    cases = [Case("lambda=0.5, L=8 words, k=1", (0.5, 8, 1)),
             Case("lambda=2.0, L=8, k=1", (2.0, 8, 1)),
             Case("lambda=0.5, L=12, k=2 (a noun and its adjective)", (0.5, 12, 2)),
             Case("lambda=1.0, L=3, k=3 (every word)", (1.0, 3, 3)),
             Case("lambda=0.05, L=10, k=1 (nearly uniform attention)", (0.05, 10, 1)),
             Case("lambda=3.0, L=20, k=1", (3.0, 20, 1))]
    for _ in range(3):
        smooth, length = round(rng.uniform(0.2, 3.0), 3), rng.randint(4, 30)
        k = rng.randint(1, length - 1)
        cases.append(Case(f"lambda={smooth}, L={length}, k={k}", (smooth, length, k)))
    return cases


@task("16.attention_cap", "derive: the largest share of the smooth self-attention that k of L words can take", 2,
      answer="attention_cap")
def check_attention_cap(answer) -> None:
    """Compare the learner's formula with the share SSCL's encoder reaches, on settings the lesson does not print."""
    compare_with_reference(
        answer, _cap_cases(), _cap_reference, _CAP_MISTAKES,
        generic_hint="Each word's logit is lambda * tanh(d_i), in [-lambda, lambda]. Give the k words the largest "
                     "logit and the other L - k the smallest, then write the k words' share of the softmax.",
        hint_needs_every_case=True,  # single numbers coincide by chance on a setting (k = L gives 1 for several)
        autograd=False,
    )
