"""Lesson 15 tasks: PCRL's hybrid path (the cross-model mixup), and a derivation of how many images its
transformation vector describes.

[1] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing Diverse
    Contexts (PCRL), ICCV 2021.
"""

from __future__ import annotations

import numbers
import random

import torch

from clcourse.grading.harness import (
    Case,
    Failure,
    Mistake,
    call_answer,
    case_seed,
    compare_with_reference,
    describe,
    probe,
    require_same_gradient,
    run_case_probe,
)
from clcourse.grading.registry import task
from clcourse.methods.pcrl import apply_transforms, make_transforms

# --- 15.hybrid -------------------------------------------------------------------------------


def _hybrid_reference(ordinary: list[torch.Tensor], momentum: list[torch.Tensor],
                      targets: tuple[torch.Tensor, torch.Tensor], u: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The hybrid path of [1] as clcourse.methods.PCRL._reconstruct computes it.

    Shapes: ordinary and momentum are L maps [B, C_l, S_l, S_l] (the gated encoder features of the two paths,
    shallow to deep, the bottleneck last); targets (T1(x1), T2(x2)), each [B, C, S, S]; u in [0, 1], the Beta(1, 1)
    draw. With alpha = max(u, 1 - u) >= 1/2, returns (the L maps alpha * ordinary + (1 - alpha) * momentum, the
    target alpha * T1(x1) + (1 - alpha) * T2(x2) [B, C, S, S]).
    """
    alpha = max(u, 1.0 - u)
    features = [alpha * o + (1 - alpha) * m for o, m in zip(ordinary, momentum)]
    return features, alpha * targets[0] + (1 - alpha) * targets[1]


def _hybrid_variant(ordinary, momentum, targets, u, *, fold="max", swap=False, levels="all", target="mixed"):
    """The hybrid with one slip (the defaults compute the reference).

    fold: "max" (alpha = max(u, 1 - u)), "min" or "none" (alpha = u). swap: alpha weighs the momentum maps.
    levels: which maps are mixed: "all", "bottleneck" (the skips stay ordinary), "skips" (the bottleneck stays
    ordinary) or "bottleneck_only" (only the mixed bottleneck is returned). target: "mixed", "first" (T1(x1)),
    "swapped" ((1 - alpha) T1 + alpha T2), "unfolded" (weighted by u) or "mean" (weighted 1/2 each).
    """
    alpha = {"max": max(u, 1.0 - u), "min": min(u, 1.0 - u), "none": u}[fold]
    a, b = (1 - alpha, alpha) if swap else (alpha, 1 - alpha)
    mixed = [a * o + b * m for o, m in zip(ordinary, momentum)]
    last = len(mixed) - 1
    if levels == "bottleneck":
        mixed = [f if i == last else o for i, (f, o) in enumerate(zip(mixed, ordinary))]
    elif levels == "skips":
        mixed = [o if i == last else f for i, (f, o) in enumerate(zip(mixed, ordinary))]
    elif levels == "bottleneck_only":
        mixed = mixed[-1:]
    t1, t2 = targets
    weight = {"mixed": alpha, "first": 1.0, "swapped": 1 - alpha, "unfolded": u, "mean": 0.5}[target]
    return mixed, weight * t1 + (1 - weight) * t2


_DOMINATE = ("The ordinary side must dominate: it is the path trained by backprop (the momentum encoder only "
             "follows it), so [1] folds the Beta(1, 1) draw into alpha = max(u, 1 - u) >= 1/2 and gives alpha to "
             "the ordinary maps.")

_HYBRID_MISTAKES = [
    Mistake("alpha was not folded: alpha = u puts most of the weight on the momentum side whenever u < 1/2. "
            + _DOMINATE, lambda *a: _hybrid_variant(*a, fold="none")),
    Mistake("alpha was folded to the smaller side (min(u, 1 - u), or alpha given to the momentum side everywhere): "
            + _DOMINATE, lambda *a: _hybrid_variant(*a, fold="min")),
    Mistake("The weights of the maps are swapped: alpha multiplies the momentum maps. The hybrid is alpha * ordinary "
            "+ (1 - alpha) * momentum, with the same alpha >= 1/2 that weighs T1(x1) in the target. " + _DOMINATE,
            lambda *a: _hybrid_variant(*a, swap=True)),
    Mistake("Only the bottleneck (the last map) was mixed; the skip connections were left as the ordinary path's. "
            "The decoder reads every level, so mix every map of the list: [alpha * o + (1 - alpha) * m for o, m in "
            "zip(ordinary, momentum)].", lambda *a: _hybrid_variant(*a, levels="bottleneck")),
    Mistake("Only the skip connections were mixed; the bottleneck (the last map) was left as the ordinary path's. "
            "Mix every map of the list, the bottleneck included.",
            lambda *a: _hybrid_variant(*a, levels="skips")),
    Mistake("Only the mixed bottleneck was returned: the decoder needs all L maps (the skip connections and the "
            "bottleneck), each mixed, in the order they came.",
            lambda *a: _hybrid_variant(*a, levels="bottleneck_only")),
    Mistake("The target is still T1(x1), the ordinary path's: the hybrid features hold (1 - alpha) of the momentum "
            "path's view, so their reconstruction target mixes the two targets, alpha * T1(x1) + (1 - alpha) * "
            "T2(x2).", lambda *a: _hybrid_variant(*a, target="first")),
    Mistake("The target's weights are swapped: T1(x1), the ordinary path's target, takes alpha, as the ordinary maps "
            "do: alpha * T1(x1) + (1 - alpha) * T2(x2).", lambda *a: _hybrid_variant(*a, target="swapped")),
    Mistake("The target uses another alpha than the maps (u, not folded): mix the targets with the same alpha = "
            "max(u, 1 - u) as the features, so that each side's share of the target is its share of the features.",
            lambda *a: _hybrid_variant(*a, target="unfolded")),
    Mistake("The target averages the two targets (1/2 each): mix them with the same alpha as the features, "
            "alpha * T1(x1) + (1 - alpha) * T2(x2).", lambda *a: _hybrid_variant(*a, target="mean")),
]


def _hybrid_cases() -> list[Case]:
    g = torch.Generator().manual_seed(case_seed(150))
    rng = random.Random(case_seed(151))

    def inputs(batch, widths, side, channels, u, dtype=torch.float32):
        ordinary = [torch.randn(batch, w, side >> i, side >> i, generator=g, dtype=dtype).requires_grad_()
                    for i, w in enumerate(widths)]
        momentum = [torch.randn(batch, w, side >> i, side >> i, generator=g, dtype=dtype)
                    for i, w in enumerate(widths)]
        targets = tuple(torch.rand(batch, channels, side, side, generator=g, dtype=dtype) for _ in range(2))
        return ordinary, momentum, targets, u

    low, high = round(rng.uniform(0.02, 0.45), 4), round(rng.uniform(0.55, 0.98), 4)
    return [
        Case("B=2, L=3 maps (4 x 16 x 16, 8 x 8 x 8, 16 x 4 x 4; the ordinary ones require gradients), 1-channel "
             "16 x 16 targets, u=0.3 (so alpha = 0.7)", inputs(2, (4, 8, 16), 16, 1, 0.3)),
        Case("B=3, L=3 maps (4, 8, 16 channels on 16 x 16 views), 1-channel targets, u=0.85 (already above 1/2)",
             inputs(3, (4, 8, 16), 16, 1, 0.85)),
        Case("B=2, L=2 maps (8 x 8 x 8, 16 x 4 x 4), 3-channel 8 x 8 targets, u=0.5 (both sides weigh 1/2)",
             inputs(2, (8, 16), 8, 3, 0.5)),
        Case("B=2, L=3, u=0.0 (alpha = 1: the hybrid is the ordinary path)", inputs(2, (4, 8, 16), 16, 1, 0.0)),
        Case("B=2, L=3, u=1.0 (alpha = 1 as well)", inputs(2, (4, 8, 16), 16, 1, 1.0)),
        Case(f"B=4, L=3 maps (2, 4, 8 channels on 8 x 8 views), 1-channel targets, u={low}",
             inputs(4, (2, 4, 8), 8, 1, low)),
        Case(f"B=2, L=4 maps (2, 4, 8, 16 channels on 16 x 16 views) in float64 (keep the dtype), 1-channel targets, "
             f"u={high}", inputs(2, (2, 4, 8, 16), 16, 1, high, torch.float64)),
    ]


_OUT_OF_PLACE = ("Use out-of-place operations (alpha * o, not o.mul_(alpha) or o *= alpha): the caller still needs "
                 "its feature maps and targets, the ordinary ones for the ordinary path's loss.")


def _maps_keep_gradient(got, args: tuple, case: Case) -> tuple[str, str] | None:
    """A property: when the ordinary maps require gradients, every hybrid map must too."""
    if not any(o.requires_grad for o in args[0]):
        return None
    cut = [i for i, f in enumerate(got[0]) if not (isinstance(f, torch.Tensor) and f.requires_grad)]
    if cut:
        which = f"maps {', '.join(map(str, cut))} are" if len(cut) > 1 else f"map {cut[0]} is"
        return (f"hybrid {which} (counting from 0) cut off from the ordinary maps' graph: no gradient can reach "
                "the ordinary encoder through them",
                "The ordinary encoder is trained through the hybrid's reconstruction loss too: build every map from "
                "the ordinary maps with torch operations, no .detach(), .data, .item(), torch.tensor(...) or "
                "torch.no_grad().")
    return None


def _changed_inputs(before: tuple, after: tuple) -> list[str]:
    """Names of the inputs (ordinary / momentum maps, targets) whose values differ after the call."""
    names = ("the ordinary maps", "the momentum maps", "the targets")
    return [name for name, old, new in zip(names, before, after)
            if any(not torch.equal(o.detach(), n.detach()) for o, n in zip(old, new))]


def _inputs_unchanged(got, args: tuple, case: Case) -> tuple[str, str] | None:
    """A property: the answer must not have written into its input maps or targets (lists the harness's own
    check does not look into)."""
    changed = _changed_inputs(case.args[:3], args[:3])
    if changed:
        return f"your function changed {' and '.join(changed)} in place", _OUT_OF_PLACE
    return None


@probe
def _hybrid_gradients(answer, ordinary, momentum, targets, u, weights):
    """Run ``answer`` on leaf copies of the ordinary maps; return (the gradients of sum_l <weights_l, features_l>
    with respect to each ordinary map [B, C_l, S_l, S_l], or None when the features are not all tensors in their
    graph; the inputs the call changed in place, by name)."""
    leaves = [o.detach().clone().requires_grad_() for o in ordinary]
    before = ([o.detach().clone() for o in ordinary], [m.clone() for m in momentum], [t.clone() for t in targets])
    got = call_answer(answer, (leaves, momentum, targets, u), {}, "")
    changed = _changed_inputs(before, (leaves, momentum, targets))
    features = got[0] if isinstance(got, (tuple, list)) and len(got) == 2 else None
    if not (isinstance(features, (tuple, list)) and len(features) == len(weights)
            and all(isinstance(f, torch.Tensor) and f.requires_grad and f.shape == w.shape
                    for f, w in zip(features, weights))):
        return None, changed
    loss = sum((f * w).sum() for f, w in zip(features, weights))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)], changed


def _reference_gradients(ordinary, momentum, targets, u, weights):
    leaves = [o.detach().clone().requires_grad_() for o in ordinary]
    features, _ = _hybrid_reference(leaves, momentum, targets, u)
    return list(torch.autograd.grad(sum((f * w).sum() for f, w in zip(features, weights)), leaves))


_GRADIENT_HINT = ("The hybrid has the right values but not the right gradient: each map's gradient with respect to "
                  "the ordinary map is alpha. Part of it is cut from the graph (.detach(), .data, torch.no_grad()) "
                  "or a value was written into a tensor in place; build every map from the ordinary maps with torch "
                  "operations.")


def _check_gradients(answer, cases: list[Case]) -> None:
    """On the cases whose ordinary maps require gradients, the answer's gradients must be the reference's, and
    no input may change (checked where the answer runs, also when grading)."""
    g = torch.Generator().manual_seed(case_seed(152))
    for case in cases:
        if not any(o.requires_grad for o in case.args[0]):
            continue
        args, _ = case.fresh()
        weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in args[0]]
        got, changed = run_case_probe(answer, case, _hybrid_gradients, *args, weights)
        if changed:
            raise Failure(case.name, f"your function changed {' and '.join(changed)} in place", hint=_OUT_OF_PLACE)
        expected = _reference_gradients(*case.fresh()[0], weights)
        if got is None:
            raise Failure(case.name, "the hybrid maps are cut off from the ordinary maps' graph",
                          hint=_GRADIENT_HINT)
        require_same_gradient(case, got, expected, "the ordinary maps", _GRADIENT_HINT, rtol=1e-4, atol=1e-6)


@task("15.hybrid", "PCRL's hybrid path: mix every feature map and the targets with alpha = max(u, 1 - u)", 2,
      answer="hybrid")
def check_hybrid(answer) -> None:
    """Compare with the hybrid PCRL._reconstruct computes (the maps and the target), then the gradients."""
    cases = _hybrid_cases()
    compare_with_reference(
        answer, cases, _hybrid_reference, _HYBRID_MISTAKES,
        generic_hint="alpha = max(u, 1 - u); features = [alpha * o + (1 - alpha) * m for o, m in zip(ordinary, "
                     "momentum)] (every map: the skips and the bottleneck); target = alpha * T1(x1) + (1 - alpha) * "
                     "T2(x2) with the same alpha; return (features, target).",
        error_hints=[
            (r"can't multiply sequence|unsupported operand type.*list",
             "ordinary and momentum are lists of L maps: mix them map by map, e.g. with a list comprehension over "
             "zip(ordinary, momentum)."),
            (r"leaf Variable that requires grad.*in-place", _OUT_OF_PLACE),
        ],
        properties=[_inputs_unchanged, _maps_keep_gradient],
    )
    _check_gradients(answer, cases)


# --- 15.dihedral -----------------------------------------------------------------------------


def _canonical_closed_form(flip_rows: bool, flip_cols: bool, k: int) -> tuple[bool, int]:
    """The transformation without a row flip that moves every image as (flip_rows, flip_cols, k) does.

    ``apply_transforms`` flips first, then turns k quarter turns counter-clockwise: the image moves by
    R^k F_c^{flip_cols} F_r^{flip_rows} (F_r upside down, F_c left to right, R a counter-clockwise quarter turn,
    the rightmost applied first). Flipping upside down is flipping left to right, then a half turn: F_r = R^2 F_c;
    R^2 commutes with every flip and turn, so R^k F_c^c F_r = R^{k + 2} F_c^{c + 1}. Returns (flip_cols2, k2)
    with k2 in 0..3.
    """
    return bool(flip_cols) != bool(flip_rows), (k + 2 * int(bool(flip_rows))) % 4


_PROBE_IMAGE = torch.arange(9.0).view(1, 1, 3, 3)  # nine distinct values: no flip or turn leaves it as it is


def _moved(image: torch.Tensor, flip_rows, flip_cols, k) -> torch.Tensor:
    """``image`` [1, C, S, S] moved by the transformation vector of (flip_rows, flip_cols, k)."""
    return apply_transforms(image, make_transforms([bool(flip_rows)], [bool(flip_cols)], [int(k)]))


def _canonical_reference(flip_rows: bool, flip_cols: bool, k: int) -> tuple[bool, int]:
    """The closed form, after checking with apply_transforms that it moves an image as the input does."""
    flip_cols2, k2 = _canonical_closed_form(flip_rows, flip_cols, k)
    if not torch.equal(_moved(_PROBE_IMAGE, False, flip_cols2, k2), _moved(_PROBE_IMAGE, flip_rows, flip_cols, k)):
        raise RuntimeError(f"apply_transforms moves an image by ({flip_rows}, {flip_cols}, {k}) otherwise than by "
                           f"(False, {flip_cols2}, {k2}), the closed form")
    return flip_cols2, k2


def _canonical_variant(flip_rows, flip_cols, k, *, toggle=True, turn=2, mod=True, both_cancel=False,
                       turn_then_flip=False, keep_rows=False):
    """The canonical form with one slip (the defaults compute it).

    toggle: removing the row flip toggles the column flip. turn: the quarter turns it adds (2, a half turn).
    mod: k2 taken mod 4. both_cancel: both flips taken for the identity. turn_then_flip: the answer solved for
    "turn, then flip" (so its turn runs the other way when it flips). keep_rows: the column flip removed instead.
    """
    fr, fc = int(bool(flip_rows)), int(bool(flip_cols))
    if keep_rows:
        fr, fc = fc, fr
    flip = bool(fc ^ fr) if toggle else bool(fc)
    k2 = k + turn * fr
    if both_cancel and fr and fc:
        k2 = k
    if turn_then_flip and flip:
        k2 = -k2
    return flip, k2 % 4 if mod else k2


_DIHEDRAL_MISTAKES = [
    Mistake("The row flip was dropped: flipping upside down changes the image. It equals flipping left to right, then "
            "a half turn (F_r = R^2 F_c): toggle the column flip and add 2 quarter turns.",
            lambda *a: _canonical_variant(*a, toggle=False, turn=0)),
    Mistake("The row flip was treated as a column flip: flipping upside down is flipping left to right *and then a "
            "half turn* (F_r = R^2 F_c). Toggling the column flip is right, but k must change too, by 2.",
            lambda *a: _canonical_variant(*a, turn=0)),
    Mistake("A row flip is not a half turn alone: a half turn moves the top-left corner to the bottom-right, a row "
            "flip to the bottom-left. F_r = R^2 F_c: add 2 quarter turns and toggle the column flip.",
            lambda *a: _canonical_variant(*a, toggle=False)),
    Mistake("A row flip is a column flip plus a *half* turn (2 quarter turns), not a quarter turn: a quarter turn "
            "would swap the image's rows and columns.", lambda *a: _canonical_variant(*a, turn=1)),
    Mistake("A row flip is a column flip plus a *half* turn (2 quarter turns), not a clockwise quarter turn: a "
            "quarter turn, either way, would swap the image's rows and columns.",
            lambda *a: _canonical_variant(*a, turn=-1)),
    Mistake("Both flips together are not the identity: flipping upside down and left to right is a half turn "
            "(F_r F_c = R^2), so (True, True, k) is (False, k + 2 mod 4).",
            lambda *a: _canonical_variant(*a, both_cancel=True)),
    Mistake("k2 was not taken mod 4: k + 2 reaches 4 and 5, which are 0 and 1 quarter turns (a full turn is the "
            "identity); the transformation vector's one-hot only holds k in 0..3.",
            lambda *a: _canonical_variant(*a, mod=False)),
    Mistake("The turn runs the wrong way (clockwise) when the answer flips: the answer is read as apply_transforms "
            "does, flip first, then turn k2 quarter turns counter-clockwise. Turning first and flipping after "
            "reverses the turn (F_c R^k = R^-k F_c).", lambda *a: _canonical_variant(*a, turn_then_flip=True)),
    Mistake("The column flip was removed instead of the row flip: the answer's first entry is the left-right "
            "(column) flip, and the row flip must be gone: F_r = R^2 F_c.",
            lambda *a: _canonical_variant(*a, keep_rows=True)),
]


def _plain_pair(value):
    """``value`` as (flip, k) of Python bools / ints when it is a pair of numbers, else None."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    out = []
    for v in value:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            v = v.item()
        elif hasattr(v, "item") and hasattr(v, "dtype") and getattr(v, "ndim", 0) == 0:  # a NumPy scalar
            v = v.item()
        if not isinstance(v, numbers.Integral):
            return None
        out.append(v)
    return out[0], out[1]


def _pair_problem(value) -> str | None:
    """Why ``value`` is not a valid (flip_cols2, k2), or None."""
    if isinstance(value, torch.Tensor):
        return (f"expected a pair (flip_cols2, k2), got a tensor of shape {list(value.shape)}: return the column "
                "flip and the number of quarter turns, not a transformation vector")
    if not isinstance(value, (tuple, list)):
        return f"expected a pair (flip_cols2, k2), got {type(value).__name__} {value!r:.60}"
    if len(value) != 2:
        return f"expected a pair (flip_cols2, k2), got {len(value)} items"
    pair = _plain_pair(value)
    if pair is None:
        return (f"expected a bool and an int (flip_cols2, k2), got {type(value[0]).__name__} and "
                f"{type(value[1]).__name__}: {value!r:.60}")
    flip, k2 = pair
    if flip not in (0, 1):
        return f"flip_cols2 must be True or False (or 1 / 0), got {flip}"
    if isinstance(k2, bool) or not 0 <= k2 <= 3:
        return f"k2 must be an int in 0..3 (the quarter turns of the one-hot), got {k2!r}"
    return None


def _dihedral_compare(image: torch.Tensor):
    """``(got, expected) -> difference or None``: the same pair, or two valid pairs that move ``image`` alike."""

    def compare(got, expected):
        if _plain_pair(got) is not None and _plain_pair(got) == _plain_pair(expected):
            return None  # also how a wrong variant (k2 = 5, ...) is recognised
        problem = _pair_problem(got)
        if problem:
            return problem
        if _pair_problem(expected):
            return f"expected {expected!r}, got {got!r}"
        (flip, k2), (flip_e, k_e) = _plain_pair(got), _plain_pair(expected)
        if torch.equal(_moved(image, False, flip, k2), _moved(image, False, flip_e, k_e)):
            return None
        return ("on a random image, your transformation gives another image than the input's "
                "(flip rows, flip cols, k)")

    return compare


def _show_pair(value) -> str:
    pair = _plain_pair(value) if _pair_problem(value) is None else None
    if pair is None:
        return describe(value)
    flip, k2 = pair
    words = ("flip left to right, then " if flip else "") + f"{k2} quarter turn{'' if k2 == 1 else 's'} " \
        "counter-clockwise"
    return f"{value!r}: {words}"


def _dihedral_cases() -> list[Case]:
    settings = [(fr, fc, k) for fr in (False, True) for fc in (False, True) for k in range(4)]
    return [Case(f"flip_rows={fr}, flip_cols={fc}, k={k}", (fr, fc, k)) for fr, fc, k in settings]


@task("15.dihedral", "derive: the flips and quarter turns of a square without a row flip (16 settings, 8 images)", 2,
      answer="canonical")
def check_dihedral(answer) -> None:
    """On all 16 settings, the answer's (flip_cols2, k2) must move a random image as the setting does."""
    g = torch.Generator().manual_seed(case_seed(153))
    image = torch.rand(1, 2, 5, 5, generator=g)
    compare_with_reference(
        answer, _dihedral_cases(), _canonical_reference, _DIHEDRAL_MISTAKES,
        generic_hint="Without a row flip the answer is the input itself, (flip_cols, k). For a row flip, draw a "
                     "letter such as F, flip it upside down, then find the left-right flip and the turn that give "
                     "the same drawing; that turn commutes with every flip and turn, so it adds to k (mod 4).",
        compare=_dihedral_compare(image),
        show=_show_pair,
        hint_needs_every_case=True,  # small pairs coincide by chance on a few settings
        autograd=False,
    )
