"""Lesson 11 checks: the references agree with the package, solutions pass, typical wrong answers get their hint."""

import pytest
import torch
import torch.nn.functional as F

from clcourse.encoders import SmallCNN
from clcourse.grading import evaluate, tasks
from clcourse.grading.lesson11_supcon import (
    _mask_cases, _positive_mask_reference, _supcon_cases, _supcon_out_reference,
)
from clcourse.losses import supcon
from clcourse.methods import SupCon
from clcourse.methods.supcon import unlabelled_as_own_class

from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer


def test_lesson_11_has_two_tasks():
    assert [t.id for t in tasks(11)] == ["11.supcon_out", "11.positive_mask"]


def test_supcon_reference_is_the_packages_l_out():
    for case in _supcon_cases():
        z, labels, t = case.args
        # float32 through two different paths: about 100 ulps of the loss
        torch.testing.assert_close(_supcon_out_reference(z, labels, t), supcon(z, labels, t, variant="out"),
                                   rtol=1e-5, atol=1e-5)
    # the cases tell L_out from L_in: some anchor has more than one positive
    z, labels, t = _supcon_cases()[0].args
    assert not torch.allclose(supcon(z, labels, t, "out"), supcon(z, labels, t, "in"))


def _loss_from_mask(z_flat, mask, t):
    """L_out from a mask of positives, written independently of clcourse.losses."""
    x = F.normalize(z_flat, dim=1)
    eye = torch.eye(len(x), dtype=torch.bool)
    log_prob = (x @ x.T / t).masked_fill(eye, float("-inf")).log_softmax(dim=1)
    has = mask.any(1)
    per = -log_prob.masked_fill(~mask, 0).sum(1)[has] / mask.sum(1)[has]
    return per.mean()


def test_positive_mask_reference_is_what_the_methods_loss_uses():
    torch.manual_seed(0)
    model = SupCon(SmallCNN(1, width=4, out_dim=12), projection_dim=6, hidden_dim=8, temperature=0.2)
    for case in _mask_cases():
        labels, v = case.args
        views = [torch.rand(len(labels), 1, 8, 8) for _ in range(v)]
        mask = _positive_mask_reference(labels, v)
        assert mask.dtype == torch.bool and mask.shape == (v * len(labels),) * 2
        if not mask.any():
            continue  # no anchor has a positive: the package's loss refuses such a batch
        z = model.project(torch.cat(views))  # view-major, as training_step flattens it
        expected = _loss_from_mask(z, mask, 0.2)  # float32, another path than the package's: tolerances below
        torch.testing.assert_close(expected, model.training_step((views, labels)), rtol=1e-5, atol=1e-5)
        flat = unlabelled_as_own_class(labels).repeat(v)
        torch.testing.assert_close(expected, supcon(z, flat, 0.2), rtol=1e-5, atol=1e-5)


# --- solutions a learner might write ---------------------------------------------------------

def supcon_solution(z, labels, temperature=0.1):
    z = F.normalize(z, dim=1)
    m = len(z)
    self_mask = torch.eye(m, dtype=torch.bool)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has = n_pos > 0
    return (-log_prob.masked_fill(~positives, 0).sum(1)[has] / n_pos[has]).mean()


def supcon_loop_solution(z, labels, temperature=0.1):
    """Anchor by anchor, with the exponentials written out."""
    z = F.normalize(z, dim=1)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = torch.stack([(z[i] @ z[a] / temperature).exp() for a in others]).sum()
        losses.append(-torch.stack([(z[i] @ z[p] / temperature).exp() / denominator for p in positives]).log().mean())
    return torch.stack(losses).mean()


def mask_solution(labels, n_views=2):
    classes = labels.clone()
    unlabelled = labels == -1
    classes[unlabelled] = labels.max() + 1 + torch.arange(int(unlabelled.sum()))
    flat = classes.repeat(n_views)
    return (flat[:, None] == flat[None, :]) & ~torch.eye(len(flat), dtype=torch.bool)


def mask_image_id_solution(labels, n_views=2):
    """Same class and labelled, or the same image (another view)."""
    image = torch.arange(len(labels)).repeat(n_views)
    flat = labels.repeat(n_views)
    same = ((flat[:, None] == flat[None, :]) & (flat[:, None] >= 0)) | (image[:, None] == image[None, :])
    return same & ~torch.eye(len(flat), dtype=torch.bool)


@pytest.mark.parametrize("task_id, answer", [
    ("11.supcon_out", supcon_solution), ("11.supcon_out", supcon_loop_solution),
    ("11.positive_mask", mask_solution), ("11.positive_mask", mask_image_id_solution),
])
def test_correct_answers_pass(task_id, answer):
    result = evaluate(task_id, answer)
    assert result.passed, result.message


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

def sc(z, labels, t=0.1, *, norm=True, tpow=1, self_denominator=False, self_positive=False, l_in=False,
       pooled=False, reduce="mean", lonely="drop", positives_in_denominator=True, detach=False):
    z = F.normalize(z, dim=1) if norm else z
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = z @ z.T / t ** tpow
    positives = labels[:, None] == labels[None, :]
    if not self_positive:
        positives = positives & ~eye
    excluded = eye.clone() if not self_denominator else torch.zeros_like(eye)
    if not positives_in_denominator:
        excluded |= positives
    exp = logits.exp().masked_fill(excluded, 0)
    log_prob = logits - exp.sum(1, keepdim=True).log()
    if self_positive and not self_denominator:
        log_prob = log_prob.masked_fill(eye, float("-inf"))
    n_pos = positives.sum(1)
    if pooled:
        return -(log_prob * positives).nan_to_num(neginf=0.0).sum() / n_pos.sum()
    if l_in:
        per = -((log_prob.exp() * positives).sum(1) / n_pos).log()
    else:
        per = -log_prob.masked_fill(~positives, 0).sum(1) / (n_pos if lonely == "nan" else n_pos.clamp(min=1))
    if lonely == "drop":
        per = per[n_pos > 0]
    out = per.sum() if reduce == "sum" else per.mean()
    return out.detach() if detach else out


def mask(labels, v=2, *, diagonal=False, minus_one="own", order="repeat", dtype=None, views=True,
         labels_used=True):
    classes = labels.clone()
    unlabelled = labels == -1
    if minus_one == "own":
        classes[unlabelled] = labels.max() + 1 + torch.arange(int(unlabelled.sum()))
    if not labels_used:
        classes = torch.arange(len(labels))
    flat = getattr(classes, order)(v) if views else classes
    out = flat[:, None] == flat[None, :]
    if minus_one == "nothing":
        lab = (labels >= 0).repeat(v)
        out = out & lab[:, None] & lab[None, :]
    if not diagonal:
        out = out & ~torch.eye(len(flat), dtype=torch.bool)
    return out if dtype is None else out.to(dtype)


WRONG = {
    "11.supcon_out": [
        (lambda *a: sc(*a, self_denominator=True), "anchor itself is in the denominator"),
        (lambda *a: sc(*a, self_positive=True, self_denominator=True), "its own positive"),
        (lambda *a: sc(*a, self_positive=True), "its own positive"),
        (lambda *a: sc(*a, l_in=True), "L_in"),
        (lambda *a: sc(*a, norm=False), "not L2-normalised"),
        (lambda *a: sc(*a, tpow=0), "temperature is missing"),
        (lambda *a: sc(*a, tpow=-1), "multiplies"),
        (lambda *a: sc(*a, positives_in_denominator=False), "left out of the denominator"),
        (lambda *a: sc(*a, pooled=True), "pooled"),
        (lambda *a: sc(*a, reduce="sum"), "summed"),
        (lambda *a: sc(*a, lonely="nan"), "0 / 0"),
        (lambda *a: sc(*a, lonely="keep"), "counted with loss 0"),
        (lambda *a: sc(*a, detach=True), "cut off"),
    ],
    "11.positive_mask": [
        (lambda *a: mask(*a, diagonal=True), "diagonal is kept"),
        (lambda *a: mask(*a, minus_one="class"), "-1 was treated as a class"),
        (lambda *a: mask(*a, minus_one="nothing"), "no positives at all"),
        (lambda *a: mask(*a, order="repeat_interleave"), "image-major"),
        (lambda *a: mask(*a, labels_used=False), "labels were ignored"),
        (lambda *a: mask(*a, views=False), "one row per image"),
        (lambda *a: mask(*a, dtype=torch.float32), "must be boolean"),
        (lambda *a: mask(*a, dtype=torch.int64), "must be boolean"),
    ],
}


def test_wrong_answers_cover_every_task():
    assert_covers(WRONG, tasks(11))


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)
