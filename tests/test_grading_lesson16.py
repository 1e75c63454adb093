"""Lesson 16 checks: the references agree with SSCL, solutions pass, wrong and hostile answers fail with a hint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from wrong_answers import (
    assert_covers,
    assert_each_mistake_told_by_its_own_hint,
    assert_mistake_differs_somewhere,
    assert_rejected_with_hint,
    assert_solution_passes_and_student_hides_it,
    each_wrong_answer,
    exits_on_purpose,
    raises_on_purpose,
)

from clcourse.device import torch_threads
from clcourse.grading import evaluate, tasks
from clcourse.grading.harness import call_plain, first_difference
from clcourse.grading.lesson16_sscl import (
    _CAP_MISTAKES,
    _CONTRAST_MISTAKES,
    _cap_cases,
    _cap_closed_form,
    _cap_reached,
    _cap_reference,
    _cap_variant,
    _contrast_cases,
    _contrast_reference,
    _contrast_variant,
)
from clcourse.methods.sscl import SSCL, orthogonality_penalty


def test_lesson_16_has_two_tasks():
    assert [t.id for t in tasks(16)] == ["16.contrast", "16.attention_cap"]


# --- 16.contrast: the reference is the loss SSCL trains on ------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_reference_is_the_loss_of_an_sscl_step(seed):
    """A training step of a small SSCL is the reference on its reconstructions and sentence vectors, plus the
    orthogonality penalty; without negatives the step's loss is not the reference."""
    g = torch.Generator().manual_seed(seed)
    vectors, aspects = torch.randn(30, 8, generator=g), torch.randn(5, 8, generator=g)
    ids = torch.randint(1, 30, (12, 7), generator=g)
    torch.manual_seed(seed)
    model = SSCL(vectors, aspects, smooth=2.0, orthogonality=0.5)
    with torch_threads(1):
        out = model.outputs(ids)
        loss = model.training_step(ids)
    expected = _contrast_reference(out["reconstructions"], out["sentences"]) + 0.5 * orthogonality_penalty(
        model.aspects)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    model.contrastive = False
    assert not torch.allclose(model.training_step(ids), expected)


def test_contrast_reference_is_the_formula_written_out():
    g = torch.Generator().manual_seed(3)
    r, z = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    terms = []
    for s in range(5):
        cos = [F.cosine_similarity(r[s], z[n], dim=0) for n in range(5)]
        terms.append(-cos[s] + torch.log(sum(torch.exp(cos[n]) for n in range(5) if n != s)))
    torch.testing.assert_close(_contrast_reference(r, z), torch.stack(terms).mean())


@pytest.mark.parametrize("b", [2, 3, 64])
def test_identical_sentence_vectors_give_log_b_minus_one_whatever_the_reconstructions(b):
    """The look-back of the exercise: a collapsed encoder leaves the loss at log(B - 1)."""
    g = torch.Generator().manual_seed(b)
    same = torch.randn(1, 6, generator=g, dtype=torch.float64).expand(b, 6)
    loss = _contrast_reference(torch.randn(b, 6, generator=g, dtype=torch.float64), same)
    assert math.isclose(loss.item(), math.log(b - 1), abs_tol=1e-12)


@pytest.mark.parametrize("case", _contrast_cases(), ids=lambda case: case.name[:40])
def test_contrast_variant_without_a_slip_is_the_reference(case):
    expected = call_plain(_contrast_reference, case)
    assert expected.dtype == case.args[0].dtype and expected.ndim == 0
    assert first_difference(call_plain(_contrast_variant, case), expected) is None


def test_contrast_cases_hold_what_their_names_say():
    cases = _contrast_cases()
    assert {c.args[0].shape[0] for c in cases} >= {2, 8}
    for case in cases:
        r, z = case.args
        assert r.shape == z.shape and r.ndim == 2
        assert f"B={r.shape[0]}" in case.name
        if "require gradients" in case.name:
            assert r.requires_grad and z.requires_grad
        if "float64" in case.name:
            assert r.dtype == z.dtype == torch.float64
        if "the same" in case.name:
            assert torch.equal(z, z[:1].expand_as(z))
        if "equal to their sentences" in case.name:
            assert torch.equal(r, z)
    assert any(c.args[0].norm(dim=1).min() > 5 for c in cases)  # a case with long vectors


def test_contrast_gradient_reaches_both_inputs():
    r, z = _contrast_cases()[0].fresh()[0]
    grads = torch.autograd.grad(_contrast_reference(r, z), (r, z))
    assert all(g.abs().sum() > 0 for g in grads)


# --- 16.attention_cap: the closed form is what SSCL's encoder reaches -----------------------

@pytest.mark.parametrize("case", _cap_cases(), ids=lambda case: case.name)
def test_cap_closed_form_is_reached_by_the_encoder(case):
    smooth, length, k = case.args
    closed = _cap_closed_form(smooth, length, k)
    assert math.isclose(_cap_reached(smooth, length, k), closed, rel_tol=1e-5, abs_tol=1e-6)
    assert _cap_reference(smooth, length, k) == closed
    assert _cap_variant(smooth, length, k) == closed


def test_no_kernel_gives_more_than_the_cap():
    """Random kernels, sentences and word vectors: the k largest weights of a sentence never exceed the cap."""
    from clcourse.methods.sscl import SentenceEncoder

    g = torch.Generator().manual_seed(0)
    for smooth in (0.5, 2.0):
        encoder = SentenceEncoder(torch.randn(20, 6, generator=g), smooth)
        with torch.no_grad():
            encoder.kernel.weight.copy_(10 * torch.randn(6, 6, generator=g))
            attention, _ = encoder.attend(torch.randint(1, 20, (200, 9), generator=g))
        for k in (1, 2, 4):
            top = attention.topk(k, dim=1).values.sum(dim=1)
            assert top.max() <= _cap_closed_form(smooth, 9, k) + 1e-6


def test_cap_limits():
    assert _cap_closed_form(1.5, 7, 7) == 1.0  # every word
    assert math.isclose(_cap_closed_form(1e-9, 10, 3), 0.3, rel_tol=1e-6)  # no smoothness: uniform
    caps = [_cap_closed_form(s, 12, 2) for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert caps == sorted(caps) and caps[-1] < 1.0


def test_cap_cases_hold_what_their_names_say():
    for case in _cap_cases():
        smooth, length, k = case.args
        assert smooth > 0 and 1 <= k <= length
        assert f"lambda={smooth}" in case.name and f"L={length}" in case.name and f"k={k}" in case.name


def test_an_encoder_that_disagrees_with_the_closed_form_is_a_checker_bug(monkeypatch):
    import clcourse.grading.lesson16_sscl as lesson

    monkeypatch.setattr(lesson, "_cap_reached", lambda smooth, length, k: k / length)  # as if without the tanh
    result = evaluate("16.attention_cap", _cap_closed_form)
    assert not result.passed and "checker itself failed" in result.problem and "closed form" in result.problem


@pytest.mark.parametrize("mistake", _CONTRAST_MISTAKES + _CAP_MISTAKES, ids=lambda m: m.hint[:40])
def test_every_mistake_differs_from_the_reference_on_some_case(mistake):
    if mistake in _CONTRAST_MISTAKES:
        cases, reference = _contrast_cases(), _contrast_reference
    else:
        cases, reference = _cap_cases(), _cap_reference
    assert_mistake_differs_somewhere(mistake, cases, reference)


@pytest.mark.parametrize("mistakes", [_CONTRAST_MISTAKES, _CAP_MISTAKES], ids=["contrast", "attention_cap"])
def test_every_mistake_is_told_by_its_own_hint(mistakes):
    """Each known mistake, given as the answer, fails with its own hint (no other mistake shadows it)."""
    task_id = "16.contrast" if mistakes is _CONTRAST_MISTAKES else "16.attention_cap"
    assert_each_mistake_told_by_its_own_hint(task_id, mistakes)


# --- solutions a learner might write ---------------------------------------------------------

def contrast_solution(reconstructions, sentences):
    cosine = F.normalize(reconstructions, dim=1) @ F.normalize(sentences, dim=1).T
    others = ~torch.eye(len(cosine), dtype=torch.bool)
    return (-cosine.diagonal() + torch.logsumexp(cosine.masked_fill(~others, float("-inf")), dim=1)).mean()


def contrast_loop(reconstructions, sentences):
    """Sentence by sentence, the negatives gathered with a boolean index."""
    losses = []
    for s in range(len(reconstructions)):
        cos = F.cosine_similarity(reconstructions[s:s + 1], sentences, dim=1)
        keep = torch.arange(len(sentences)) != s
        losses.append(-cos[s] + torch.logsumexp(cos[keep], dim=0))
    return torch.stack(losses).mean()


def contrast_with_cross_entropy(reconstructions, sentences):
    """-cos_ss + logsumexp_{n != s} cos_sn is the cross-entropy of row s with its own column removed from the
    softmax, plus the positive... written with the diagonal at -inf and the positive added back."""
    r = reconstructions / reconstructions.norm(dim=1, keepdim=True)
    z = sentences / sentences.norm(dim=1, keepdim=True)
    cosine = r @ z.T
    masked = cosine - torch.diag(torch.full((len(cosine),), float("inf"), dtype=cosine.dtype))
    return torch.mean(torch.logsumexp(masked, 1) - torch.diagonal(cosine))


def cap_solution(smooth, length, k):
    return k / (k + (length - k) * math.exp(-2 * smooth))


def cap_softmax(smooth, length, k):
    """The softmax written out with the two extreme logits, as NumPy."""
    logits = np.array([smooth] * k + [-smooth] * (length - k))
    weights = np.exp(logits) / np.exp(logits).sum()
    return weights[:k].sum()


def cap_tensor(smooth, length, k):
    """As a 0-d tensor from torch.softmax (no autograd needed)."""
    logits = torch.tensor([smooth] * k + [-smooth] * (length - k), dtype=torch.float64)
    return torch.softmax(logits, dim=0)[:k].sum()


@pytest.mark.parametrize("task_id, answer", [
    ("16.contrast", contrast_solution), ("16.contrast", contrast_loop), ("16.contrast", contrast_with_cross_entropy),
    ("16.attention_cap", cap_solution), ("16.attention_cap", cap_softmax), ("16.attention_cap", cap_tensor),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


def test_the_solution_notebook_passes_and_the_student_notebook_holds_no_solution():
    assert_solution_passes_and_student_hides_it("16_sscl.ipynb", "16", ["16.attention_cap", "16.contrast"],
                                                ["torch.logsumexp(cosine.masked_fill(~others",
                                                 "(length - k) * math.exp(-2 * smooth)"])


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def co(r, z, *, normalize=True, transpose=False, negatives_from_r=False, diagonal="-inf", pool="logsumexp",
       reduction="mean", sign=-1.0, detach=False, in_place=False, item=False):
    """A learner's loss with one of the typical slips."""
    if detach:
        z = z.detach()
    if in_place:
        r = r.div_(r.norm(dim=1, keepdim=True))
    a, b = (F.normalize(r, dim=1), F.normalize(z, dim=1)) if normalize else (r, z)
    cosine = a @ b.T
    positive = cosine.diagonal()
    pool_from = a @ a.T if negatives_from_r else (b @ a.T if transpose else cosine)
    eye = torch.eye(len(cosine), dtype=torch.bool)
    if diagonal == "keep":
        rows = pool_from
    elif diagonal == "zero":
        rows = pool_from * ~eye
    else:
        rows = pool_from.masked_fill(eye, float("-inf"))
    if pool == "logsumexp":
        pooled = torch.logsumexp(rows, dim=1)
    elif pool == "mean":
        pooled = (pool_from * ~eye).sum(dim=1) / (len(cosine) - 1)
    elif pool == "max":
        pooled = rows.max(dim=1).values
    else:  # "sum_exp"
        pooled = rows.exp().sum(dim=1)
    loss = sign * positive + pooled
    loss = loss.mean() if reduction == "mean" else loss.sum()
    return loss.item() if item else loss


def ce(r, z):
    """InfoNCE's cross-entropy over the whole row: the positive stays in the denominator."""
    cosine = F.normalize(r, dim=1) @ F.normalize(z, dim=1).T
    return F.cross_entropy(cosine, torch.arange(len(cosine)))


def abae(r, z):
    cosine = F.normalize(r, dim=1) @ F.normalize(z, dim=1).T
    hinge = (1 - cosine.diagonal()[:, None] + cosine).clamp(min=0)
    return (hinge * ~torch.eye(len(cosine), dtype=torch.bool)).sum(dim=1).mean()


WRONG = {
    "16.contrast": [
        (lambda r, z: co(r, z, normalize=False), "not normalised"),
        (ce, "positive is inside the log-sum-exp"),
        (lambda r, z: co(r, z, diagonal="keep"), "positive is inside the log-sum-exp"),
        (lambda r, z: co(r, z, diagonal="zero"), "masked with 0"),
        (lambda r, z: co(r, z, negatives_from_r=True), "other reconstructions"),
        (lambda r, z: co(r, z, transpose=True), "Rows and columns are swapped"),
        (lambda r, z: co(r, z, sign=1.0), "sign of the positive is flipped"),
        (lambda r, z: co(r, z, reduction="sum"), "summed"),
        (lambda r, z: co(r, z, pool="mean"), "averaged"),
        (lambda r, z: co(r, z) - math.log(len(r) - 1), "log of the *mean*"),
        (lambda r, z: co(r, z, pool="max"), "hard maximum"),
        (lambda r, z: co(r, z, pool="sum_exp"), "log is missing"),
        (abae, "ABAE's max-margin loss"),
        (lambda r, z: co(r, z, detach=True), "not the right gradient"),
        (lambda r, z: co(r, z, item=True), "don't call .item()"),
        (lambda r, z: co(r, z, in_place=True), "out-of-place"),
    ],
    "16.attention_cap": [
        (lambda s, n, k: k / (k + (n - k) * math.exp(-s)), "gap is lambda, not 2 lambda"),
        (lambda s, n, k: k * math.exp(s) / (k * math.exp(s) + n * math.exp(-s)), "counts all L words"),
        (lambda s, n, k: 1 / (1 + (n - 1) * math.exp(-2 * s)), "k was taken as 1"),
        (lambda s, n, k: 1 / (k + (n - k) * math.exp(-2 * s)), "*one* of the k words"),
        (lambda s, n, k: k / (k + (n - k) * math.exp(2 * s)), "*smallest* share"),
        (lambda s, n, k: k / n, "smoothness was ignored"),
        (lambda s, n, k: math.exp(2 * s), "largest ratio of two words' weights"),
        (lambda s, n, k: 1, "without the tanh"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(16))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- hostile and broken answers: failures with a reason, never a crash or a checker error ----

def _interrupts(*args):
    raise KeyboardInterrupt


def _per_sentence(r, z):
    cosine = F.normalize(r, dim=1) @ F.normalize(z, dim=1).T
    return -cosine.diagonal() + torch.logsumexp(cosine.masked_fill(torch.eye(len(r), dtype=torch.bool),
                                                                   float("-inf")), dim=1)


def _numpy_loss(r, z):
    return contrast_solution(r, z).detach().numpy()


def _modifies_sentences(r, z):
    loss = contrast_solution(r, z)
    with torch.no_grad():
        z.zero_()
    return loss


@pytest.mark.parametrize("task_id, answer, problem", [
    ("16.contrast", raises_on_purpose, "ValueError: broken on purpose"),
    ("16.contrast", exits_on_purpose, "SystemExit"),
    ("16.contrast", _interrupts, "KeyboardInterrupt"),
    ("16.contrast", lambda r, z: None, "expected a tensor"),
    ("16.contrast", lambda r, z: "loss", "expected a tensor"),
    ("16.contrast", _per_sentence, "wrong shape"),
    ("16.contrast", _numpy_loss, "expected a tensor"),
    ("16.contrast", lambda r, z: contrast_solution(r.float(), z.float()), "wrong dtype"),
    ("16.contrast", _modifies_sentences, "changed its input number 2 in place"),
    ("16.contrast", 42, "must be a function"),
    ("16.attention_cap", raises_on_purpose, "ValueError: broken on purpose"),
    ("16.attention_cap", exits_on_purpose, "SystemExit"),
    ("16.attention_cap", lambda s, n, k: None, "expected a number"),
    ("16.attention_cap", lambda s, n, k: "0.5", "expected a number"),
    ("16.attention_cap", lambda s, n, k: float("nan"), "got nan"),
    ("16.attention_cap", lambda s, n, k: torch.tensor([0.5, 0.5]), "expected a number"),
])
def test_hostile_and_broken_answers_fail_with_a_reason(task_id, answer, problem):
    result = evaluate(task_id, answer)
    assert result.status == "failed" and result.points == 0, result.message
    assert "checker itself failed" not in result.problem, result.message
    assert result.case and problem in result.problem + result.hint, result.message
