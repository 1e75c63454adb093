"""The exercise checks: solutions pass, typical wrong answers are caught with the right hint.

Notebook execution (the grader, the build) is tested in tests/test_exercises.py.
"""

import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from wrong_answers import assert_covers, assert_rejected_with_hint, each_wrong_answer

from clcourse.augment import BatchedAugment
from clcourse.grading import CheckResult, check, evaluate, tasks
from clcourse.lessons.augmentations import variant_augment

SOURCES = sorted((Path(__file__).parent.parent / "exercises" / "source").glob("*.ipynb"))


def _solutions() -> dict:
    """Run the solution notebooks' code in-process; return what their check cells checked."""
    checked = {}
    namespace = {}
    for path in SOURCES:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                exec(cell.source, namespace)  # noqa: S102 - our own notebooks
                namespace["check"] = lambda task_id, answer: checked.setdefault(task_id, answer)
    return checked


def test_every_lesson_has_at_least_two_tasks():
    ids = [t.id for t in tasks()]
    assert len(ids) == len(set(ids))
    for lesson in range(1, 6):
        assert len(tasks(lesson)) >= 2, lesson
    assert all(t.description and t.points >= 1 for t in tasks())


def test_every_solution_passes():
    solutions = _solutions()
    assert sorted(solutions) == sorted(t.id for t in tasks())
    for task_id, answer in solutions.items():
        result = evaluate(task_id, answer)
        assert result.passed, result.message
        assert result.points == result.max_points


# --- typical wrong answers: each must fail with a hint naming the mistake --------------------

LUMA = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)


def jitter(x, b, s, *, clamp=True, gray=None, blend="right", factors=lambda f: f.view(-1, 1, 1, 1)):
    b, s = factors(b.to(x.dtype)), factors(s.to(x.dtype))
    y = x * b
    y = y.clamp(0, 1) if clamp else y
    g = gray(y) if gray else (y * LUMA.to(x.dtype)).sum(1, keepdim=True)
    out = s * y + (1 - s) * g if blend == "right" else s * g + (1 - s) * y
    return out.clamp(0, 1) if clamp else out


SHORTCUT_STRENGTH = dict(crop_scale=(0.3, 1.0), jitter_strength=2.0, gray_p=0.5)  # lesson 01's section 4


class ReluBeforeBN(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(i, h), nn.BatchNorm1d(h), nn.Linear(h, o)

    def forward(self, x):
        return self.fc2(self.bn(F.relu(self.fc1(x))))


def unseen(w, h, *, centre=True, gram=False, squared=True, qr=False):
    h = h - h.mean(0) if centre else h
    if gram:
        p = w.T @ w
    elif qr:  # an orthonormal basis of W^T's columns by QR: one column too many when W's rows are dependent
        q, _ = torch.linalg.qr(w.T)
        p = q @ q.T
    else:
        _, singular, vh = torch.linalg.svd(w, full_matrices=False)
        basis = vh[singular > singular.max() * 1e-10]
        p = basis.T @ basis
    left = h - h @ p
    return float((left.norm() / h.norm()) ** (2 if squared else 1))


def ntx(z1, z2, t=0.5, *, norm=True, diag=float("-inf"), targets=None, tpow=1, first_only=False, reduce="mean"):
    n = len(z1)
    z = torch.cat([z1, z2])
    z = F.normalize(z, dim=1) if norm else z
    logits = z @ z.T / t ** tpow
    if diag is not None:
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), diag)
    y = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]) if targets is None else targets(n)
    losses = F.cross_entropy(logits, y, reduction="none")
    losses = losses[:n] if first_only else losses
    return losses.sum() if reduce == "sum" else losses.mean()


def ntx_unshifted(z1, z2, t=0.5):
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / t)[~torch.eye(2 * n, dtype=torch.bool)].view(2 * n, 2 * n - 1)
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def clip_loss(z1, z2, t=0.5):
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / t
    y = torch.arange(len(z1))
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


def bisect_temperature(s, k, share, *, least=False, with_anchor=False, steps=100, t_power=1):
    s = torch.as_tensor(s, dtype=torch.float64)
    if with_anchor:
        s = torch.cat([torch.ones(1, dtype=torch.float64), s])
    low, high = -12.0, 12.0
    for _ in range(steps):
        t = math.exp((low + high) / 2)
        w = (s / t**t_power).softmax(0).sort(descending=not least).values[:k].sum()
        low, high = ((low + high) / 2, high) if w > share else (low, (low + high) / 2)
    return math.exp((low + high) / 2)


def nce(q, p, k, t=0.1, *, norm=True, target="zero", tpow=1, in_batch=False, pos_in_denominator=True):
    if norm:
        q, p, k = (F.normalize(x, dim=1) for x in (q, p, k))
    if in_batch:
        return F.cross_entropy(q @ p.T / t, torch.arange(len(q)))
    pos = (q * p).sum(1, keepdim=True) / t ** tpow
    neg = q @ k.T / t ** tpow
    if not pos_in_denominator:
        return (torch.logsumexp(neg, 1) - pos[:, 0]).mean()
    y = torch.zeros(len(q), dtype=torch.long) if target == "zero" else torch.arange(len(q))
    return F.cross_entropy(torch.cat([pos, neg], 1), y)


def false_negatives(b, probs, *, views=2, others=lambda b: b - 1, none=False, independent_images=False,
                    independent_views=False, balanced=False):
    p = torch.tensor(probs, dtype=torch.float64)
    same = float((p**2).sum()) if not balanced else 1 / len(p)
    expected = views * others(b) * same
    if independent_images or balanced:
        no_false = (1 - same) ** (b - 1)
    else:
        no_false = float((p * (1 - p) ** ((2 * b - 2) if independent_views else (b - 1))).sum())
    return expected, no_false if none else 1 - no_false


def semi_hard(e, labels, m=0.2, *, upper=True, fallback=True, pick="nearest", self_pairs=False):
    x = F.normalize(e, dim=1)
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    pairs = same if self_pairs else same & ~torch.eye(len(x), dtype=torch.bool)
    a, p = pairs.nonzero(as_tuple=True)
    d_ap, d_an, neg = d[a, p][:, None], d[a], ~same[a]
    ok = neg & (d_an > d_ap) & (d_an < d_ap + m) if upper else neg & (d_an > d_ap)
    if pick == "hardest":
        ok = neg
    hard = neg & (d_an <= d_ap)
    near = (d_an.masked_fill(~ok, -1.0).argmax(1) if pick == "farthest"
            else d_an.masked_fill(~ok, float("inf")).argmin(1))
    chosen = torch.where(ok.any(1), near, d_an.masked_fill(~hard, -1.0).argmax(1))
    keep = ok.any(1) | (hard.any(1) if fallback else False)
    return a[keep], p[keep], chosen[keep]


WRONG = {
    "01.color_jitter": [
        (lambda x, b, s: jitter(x, b, s, clamp=False), "No clamping"),
        (lambda x, b, s: jitter(x, b, s, gray=lambda y: y.mean(1, keepdim=True)), "channel mean"),
        (lambda x, b, s: jitter(x, b, s, blend="reversed"), "reversed"),
        (lambda x, b, s: jitter(x, b, s, factors=lambda f: f[:1].view(1, 1, 1, 1)), "first sample"),
        (lambda x, b, s: jitter(x, b, s, factors=lambda f: f.view(1, 1, 1, -1)), "view(-1, 1, 1, 1)"),
        (lambda x, b, s: jitter(x, b, s, gray=lambda y: (y * LUMA.to(y.dtype)).sum(1, keepdim=True)
                                .mean((1, 2, 3), keepdim=True)), "contrast"),
    ],
    "01.shortcut_free_views": [
        (lambda size: variant_augment("crop", size, **SHORTCUT_STRENGTH), "keep their colours"),
        (lambda size: variant_augment("color", size, **SHORTCUT_STRENGTH), "position and size"),
        (lambda size: variant_augment("none", size), "flip or a blur"),
        (lambda size: BatchedAugment(size, crop_scale=(1.0, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.5),
         "flip or a blur"),
        (lambda size: BatchedAugment(size, crop_scale=(0.02, 0.06), jitter=(1.6, 1.6, 1.6, 0.4), gray_p=0.5,
                                     blur_p=0.0), "less than 15%"),
        (lambda size: {"crop_scale": (0.3, 1.0)}, "must return a batched augmentation"),
        (lambda size: variant_augment("crop+color", 32, **SHORTCUT_STRENGTH), "[B, 3, 16, 16]"),
    ],
    "02.projection_head": [
        (lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o), nn.ReLU()),
         "activation after the last layer"),
        (lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.Linear(h, o)), "no ReLU"),
        (lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o)), "no BatchNorm1d"),
        (ReluBeforeBN, "ReLU comes after the BatchNorm"),
        (lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, h)),
         "[batch, out_dim]"),
    ],
    "02.unseen_variance": [
        (lambda w, h: 1 - unseen(w, h), "*sees*"),
        (lambda w, h: unseen(w, h, centre=False), "not centred"),
        (lambda w, h: unseen(w, h, gram=True), "not a projector"),
        (lambda w, h: 1 - float(torch.linalg.matrix_rank(w)) / w.shape[1], "counts dimensions"),
        (lambda w, h: unseen(w, h, squared=False), "ratio of norms"),
        (lambda w, h: unseen(w, h, qr=True), "orthonormal basis"),
    ],
    "03.nt_xent": [
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, norm=False), "not L2-normalised"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, diag=None), "self-similarity is not masked"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, diag=0.0), "exp(0) = 1"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, targets=lambda n: torch.arange(2 * n)), "positive index"),
        (ntx_unshifted, "i + N - 1"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, tpow=2), "temperature is applied twice"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, first_only=True), "Only one direction"),
        (clip_loss, "cross-view negatives"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t, reduce="sum"), "summed"),
        (lambda z1, z2, t=0.5: ntx(z1, z2, t).item(), "don't call .item()"),
        (lambda z1, z2, t=0.5: ntx(z1.detach(), z2.detach(), t), "gradients"),
    ],
    "03.temperature_for_share": [
        (lambda s, k, share=0.5: bisect_temperature(s, 1, share), "k was ignored"),
        (lambda s, k, share=0.5: bisect_temperature(s, k, share, least=True), "bisection on log t"),
        (lambda s, k, share=0.5: bisect_temperature(s, k, share, t_power=2), "applied twice"),
        (lambda s, k, share=0.5: 1 / bisect_temperature(s, k, share), "multiplied by t"),
        (lambda s, k, share=0.5: bisect_temperature(s, k, 1 - share), "1 - share"),
        (lambda s, k, share=0.5: bisect_temperature(s, k, share, with_anchor=True), "anchor itself"),
        (lambda s, k, share=0.5: bisect_temperature(s, k, share, steps=3), "bisection on log t"),
        (lambda s, k, share=0.5: 0.5, "bisection on log t"),
    ],
    "04.info_nce": [
        (lambda q, p, k, t=0.1: nce(q, p, k, t, norm=False), "not L2-normalised"),
        (lambda q, p, k, t=0.1: nce(q, p, k, t, target="arange"), "column 0"),
        (lambda q, p, k, t=0.1: nce(q, p, k, t, tpow=2), "applied twice"),
        (lambda q, p, k, t=0.1: nce(q, p, k, t, in_batch=True), "queue is ignored"),
        (lambda q, p, k, t=0.1: nce(q, p, k, t, pos_in_denominator=False), "missing from the denominator"),
    ],
    "04.false_negatives": [
        (lambda b, p: false_negatives(b, p, views=1), "One view per image"),
        (lambda b, p: false_negatives(b, p, others=lambda b: b), "own image was counted"),
        (lambda b, p: false_negatives(b, p, independent_images=True), "treated as independent of each other"),
        (lambda b, p: false_negatives(b, p, independent_views=True), "two views of one image"),
        (lambda b, p: false_negatives(b, p, none=True), "probability of *no* false negative"),
        (lambda b, p: false_negatives(b, p, balanced=True), "assumed equal"),
        (lambda b, p: false_negatives(b, p)[0], "expected a tuple"),
        (lambda b, p: (2 * (b - 1) * sum(q**2 for q in p), 1 - (1 - max(p)) ** (b - 1)), "Condition on the anchor's class"),
    ],
    "05.chord_margin": [
        (lambda d, m: 2 * m + 0 * torch.as_tensor(d), "squared* chords"),
        (lambda d, m: math.sqrt(2 * m) + 0 * torch.as_tensor(d), "only for d(a, p) = 0"),
        (lambda d, m: m + 0 * torch.as_tensor(d), "same number in both units"),
        (lambda d, m: torch.sqrt(torch.as_tensor(d) ** 2 + m) - torch.as_tensor(d), "factor 2 is missing"),
        (lambda d, m: torch.sqrt(torch.as_tensor(d) ** 2 + m / 2) - torch.as_tensor(d), "upside down"),
        (lambda d, m: torch.as_tensor(d) - torch.sqrt((torch.as_tensor(d) ** 2 - 2 * m).clamp(min=0)), "below d(a, p)"),
        (lambda d, m: (d * d + 2 * m) ** 0.5 - d if isinstance(d, float) else float("nan"), "expected shape"),
    ],
    "05.semi_hard": [
        (lambda e, l, m=0.2: semi_hard(e, l, m, pick="hardest"), "hardest negatives"),
        (lambda e, l, m=0.2: semi_hard(e, l, m, upper=False), "margin bound is missing"),
        (lambda e, l, m=0.2: semi_hard(e, l, m, fallback=False), "fallback is missing"),
        (lambda e, l, m=0.2: semi_hard(e, l, m, pick="farthest"), "nearest"),
        (lambda e, l, m=0.2: semi_hard(e, l, m, self_pairs=True), "paired with itself"),
    ],
}


def test_wrong_answers_cover_every_task():
    """Lessons 01-05 list their wrong answers here; later lessons in tests/test_grading_lessonNN.py."""
    assert_covers(WRONG, [t for t in tasks() if int(t.lesson) <= 5])
    later = {t.lesson for t in tasks() if int(t.lesson) > 5}
    missing = [n for n in later if not list(Path(__file__).parent.glob(f"test_grading_lesson{n}*.py"))]
    assert not missing, f"no tests/test_grading_lessonNN.py for lessons {missing}"


@each_wrong_answer(WRONG)
def test_wrong_answer_is_rejected_with_its_hint(task_id, answer, mistake):
    assert_rejected_with_hint(task_id, answer, mistake)


# --- feedback: never crash, say what happened ------------------------------------------------

@pytest.mark.parametrize("task_id", [t.id for t in tasks()])
def test_not_implemented_is_not_attempted(task_id):
    def stub(*args, **kwargs):
        raise NotImplementedError("write me")

    result = evaluate(task_id, stub)
    assert result.status == "not attempted" and not result.passed and result.points == 0
    assert "not attempted yet" in result.message


def test_other_exceptions_are_reported_with_their_input():
    def buggy(z1, z2, temperature=0.5):
        return z1 @ z2  # [N, D] @ [N, D]: a shape error

    result = evaluate("03.nt_xent", buggy)
    assert result.status == "failed"
    assert "RuntimeError" in result.problem and "N=8" in result.case
    assert "z1 @ z2" in result.problem  # the learner's line


def test_non_callable_and_unknown_task():
    assert "must be a function" in evaluate("03.nt_xent", 42).problem
    result = evaluate("99.nothing", lambda: None)
    assert not result.passed and "03.nt_xent" in result.problem


def test_answer_that_modifies_its_input_is_caught():
    def in_place(x, b, s):
        x.mul_(b.view(-1, 1, 1, 1)).clamp_(0, 1)
        g = (x * LUMA).sum(1, keepdim=True)
        return (s.view(-1, 1, 1, 1) * x + (1 - s.view(-1, 1, 1, 1)) * g).clamp(0, 1)

    result = evaluate("01.color_jitter", in_place)
    assert "in place" in result.problem


def test_check_prints_and_renders(capsys):
    result = check("03.nt_xent", lambda z1, z2, t=0.5: ntx(z1, z2, t, tpow=2))
    assert isinstance(result, CheckResult) and not result.passed
    out = capsys.readouterr().out
    assert "03.nt_xent: failed" in out and "expected:" in out and "received:" in out and "hint:" in out
    html = result._repr_html_()
    assert "03.nt_xent" in html and "applied twice" in html and "<table" in html


def test_exiting_or_interrupting_inside_the_answer_is_the_answers_failure():
    import sys

    def exits(z1, z2, t=0.5):
        sys.exit(3)

    def interrupted(z1, z2, t=0.5):
        raise KeyboardInterrupt

    exited = evaluate("03.nt_xent", exits)
    assert exited.status == "failed" and "SystemExit" in exited.problem and "returning" in exited.hint
    stopped = evaluate("03.nt_xent", interrupted)
    assert stopped.status == "failed" and "KeyboardInterrupt" in stopped.problem


def test_a_check_past_its_time_limit_fails_and_says_how_to_change_it(monkeypatch):
    def forever(z1, z2, t=0.5):
        while True:
            pass

    result = evaluate("03.nt_xent", forever, timeout=0.5)
    assert result.status == "failed" and "within 0.5 s" in result.problem and "CLCOURSE_CHECK_TIMEOUT" in result.hint
    monkeypatch.setenv("CLCOURSE_CHECK_TIMEOUT", "0.3")
    assert "within 0.3 s" in evaluate("03.nt_xent", forever).problem
    with pytest.raises(ValueError, match="> 0 seconds"):
        evaluate("03.nt_xent", forever, timeout=0)


def test_a_library_hint_does_not_fire_on_the_learners_own_indexing():
    def own_indexing(z1, z2, t=0.5):
        return ntx(z1, z2, t) + z1[100].sum()  # IndexError: index 100 is out of bounds for dimension 0

    result = evaluate("03.nt_xent", own_indexing)
    assert "IndexError" in result.problem and "target index" not in result.hint.lower()
    assert "i + N - 1" in evaluate("03.nt_xent", ntx_unshifted).hint  # cross_entropy's own "Target k is out of bounds"
