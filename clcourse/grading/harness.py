"""Building blocks of a check: run an answer safely, compare, describe, diagnose.

A task's checker calls the answer on several inputs (:class:`Case`), compares
each output with the reference and raises :class:`Failure` at the first
mismatch.  To say *why* it failed, the checker also computes known-wrong
variants of the reference (:class:`Mistake`): when the answer matches one, its
hint names the mistake.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import clcourse

RAISED = object()  # stands for "this call raised" where None could be a real (wrong) result

PROBES: dict[str, Callable] = {}
_case_secret: list[int | None] = [None]


def probe(fn: Callable) -> Callable:
    """Register ``fn(answer, *plain_args) -> plain data`` as a probe: the part of a check that runs the answer.

    When grading, a probe runs in the submission's worker (:mod:`clcourse.grading.worker`) and only its plain
    result comes back; the comparison with the reference stays in the grader. See :func:`run_probe`.
    """
    PROBES[f"{fn.__module__}:{fn.__qualname__}"] = fn
    return fn


def run_probe(answer: Any, fn: Callable, *args: Any) -> Any:
    """``fn(answer, *args)``, run where the answer lives: in the grading worker when ``answer`` is remote."""
    remote = getattr(answer, "run_probe", None)
    return remote(f"{fn.__module__}:{fn.__qualname__}", args) if remote is not None else fn(answer, *args)


def labelled_embeddings(labels, generator: torch.Generator, d: int = 6,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [N, d] clustered by their labels [N] (a list of ints), for the supervised losses' checks.

    Each label gets a random centre, each row its centre plus noise (0.8 per coordinate), rescaled to a
    random length in [0.4, 2]: only directions may matter to a loss that normalises, yet exp(|z|^2 / t)
    stays finite in float32. Returns (embeddings in ``dtype``, labels int64).
    """
    labels = torch.tensor(labels)
    centres = torch.randn(int(labels.max()) + 1, d, generator=generator, dtype=torch.float64)
    z = centres[labels] + 0.8 * torch.randn(len(labels), d, generator=generator, dtype=torch.float64)
    z = F.normalize(z, dim=1) * torch.empty(len(labels), 1, dtype=torch.float64).uniform_(0.4, 2.0,
                                                                                         generator=generator)
    return z.to(dtype), labels


def case_seed(base: int) -> int:
    """The seed of a check's random inputs: ``base`` in the notebook, a hidden one when grading.

    The batch grader sets a secret (:func:`hidden_cases`), so a submission cannot know the inputs it is
    graded on from this public code.
    """
    secret = _case_secret[0]
    if secret is None:
        return base
    digest = hashlib.sha256(f"{secret}:{base}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class hidden_cases:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """Within this block, :func:`case_seed` derives every seed from ``secret``."""

    def __init__(self, secret: int | None) -> None:
        self.secret = secret

    def __enter__(self) -> None:
        self.previous, _case_secret[0] = _case_secret[0], self.secret

    def __exit__(self, *exc: Any) -> None:
        _case_secret[0] = self.previous


class NotAttempted(Exception):
    """The answer raised ``NotImplementedError``: the learner has not written it yet."""


class Failure(Exception):
    """The answer is wrong on one input; the fields become the learner's feedback.

    Args:
        case: the input, in words.
        problem: what is wrong.
        expected, received: descriptions of the reference's and the answer's outputs.
        hint: the likely mistake, if recognised.
    """

    def __init__(self, case: str, problem: str, *, expected: str = "", received: str = "",
                 hint: str = ""):
        super().__init__(problem)
        self.case, self.problem = case, problem
        self.expected, self.received, self.hint = expected, received, hint


@dataclass(frozen=True)
class Case:
    """One input: a name the learner can read, and the call's arguments."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def fresh(self) -> tuple[tuple, dict]:
        """Deep copies of the arguments, so no call can change what the next one sees."""
        return copy.deepcopy(self.args), copy.deepcopy(self.kwargs)


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer: ``fn`` computes what it returns, ``hint`` explains it."""

    hint: str
    fn: Callable


def call_answer(fn: Callable, args: tuple, kwargs: dict, case: str,
                error_hints: Sequence[tuple[str, str]] = ()) -> Any:
    """Call the learner's ``fn``; turn its exceptions into feedback.

    Raises:
        NotAttempted: ``fn`` raised ``NotImplementedError``.
        Failure: ``fn`` is not callable or raised anything else, ``SystemExit``
            and ``KeyboardInterrupt`` included; the message names the exception,
            the line of the learner's code, and a hint from ``error_hints``:
            pairs (regular expression searched in "ExceptionType: message",
            case-insensitive; hint), specific enough not to fire on an error of
            the learner's own indexing.
    """
    if not callable(fn):
        raise Failure(case, f"the answer must be a function, got {type(fn).__name__} {fn!r:.60}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as exc:
        raise NotAttempted(str(exc)) from None
    except Failure as failure:  # already feedback: the grading worker died under this call
        if not failure.case:
            failure.case = case
        raise
    except SystemExit as exc:
        raise Failure(case, f"your function called exit() or sys.exit() (SystemExit: {exc.code!r})",
                      hint="A function answers by returning its result; exiting stops the check, not the task.") from None
    except KeyboardInterrupt:
        raise Failure(case, "your function was interrupted (KeyboardInterrupt) before it returned",
                      hint="Interrupting the kernel stops the check as well: run the check again and let it finish, "
                           "or look for a loop that never ends.") from None
    except Exception as exc:  # any bug in learner code must become feedback, never a crash
        text = f"{type(exc).__name__}: {exc}"
        hints = [hint for pattern, hint in error_hints if re.search(pattern, text, re.IGNORECASE)]
        where = _learner_line(exc)
        problem = f"your function raised {text}" + (f"\n{where}" if where else "")
        raise Failure(case, problem, hint=" ".join(hints)) from None


_LIBRARY_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (torch, clcourse))


def _learner_line(exc: BaseException) -> str:
    """The deepest traceback line outside torch and clcourse: usually the learner's own code."""
    remote_line = getattr(exc, "learner_line", None)  # an exception raised in the grading worker
    if isinstance(remote_line, str):
        return remote_line
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not str(Path(f.filename).resolve()).startswith(_LIBRARY_DIRS)]
    if not frames:
        return ""
    frame = frames[-1]
    return f"at line {frame.lineno} of {frame.name}(): {(frame.line or '').strip()}"


def describe(value: Any, max_items: int = 6) -> str:
    """A short, readable description of an output: type, shape, dtype and leading values."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        data = value.detach()
        if data.ndim == 0:
            return f"{_fmt(data.item())} ({dtype} scalar tensor)"
        flat = data.flatten()[:max_items].tolist()
        more = ", ..." if data.numel() > max_items else ""
        return (f"{dtype} tensor of shape {list(data.shape)}: "
                f"[{', '.join(_fmt(v) for v in flat)}{more}]")
    if isinstance(value, (tuple, list)):
        kind = type(value).__name__
        return f"{kind} of {len(value)}: " + "; ".join(describe(v, 3) for v in value)
    if isinstance(value, float):
        return _fmt(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def first_difference(got: Any, expected: Any, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """``None`` if ``got`` matches ``expected``; else one sentence saying how it differs.

    Tensors must agree in shape, dtype and (within tolerance) values; tuples
    and lists element by element; numbers within tolerance.
    """
    if isinstance(expected, torch.Tensor):
        return _tensor_difference(got, expected, rtol, atol)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {type(got).__name__}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            diff = first_difference(g, e, rtol, atol)
            if diff:
                return f"item {i}: {diff}"
        return None
    if isinstance(expected, int):
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
            got = got.item()
        if isinstance(got, bool) != isinstance(expected, bool) or not isinstance(got, int):
            return f"expected {type(expected).__name__} {expected!r}, got {type(got).__name__} {got!r:.60}"
        return None if got == expected else f"expected {expected}, got {got}"
    if isinstance(expected, float):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            return f"expected a number, got {type(got).__name__}"
        return None if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) else (
            f"expected {expected:.6g}, got {got:.6g}")
    return None if got == expected else f"expected {expected!r:.60}, got {got!r:.60}"


def _tensor_difference(got: Any, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if not isinstance(got, torch.Tensor):
        if isinstance(got, (int, float)) and expected.ndim == 0:
            return (f"returned a Python {type(got).__name__}, expected a tensor "
                    "(don't call .item() or float(): the result must stay a tensor)")
        return f"expected a tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        what = "a scalar" if expected.ndim == 0 else f"shape {list(expected.shape)}"
        return f"wrong shape: expected {what}, got shape {list(got.shape)}"
    if got.dtype != expected.dtype:
        return f"wrong dtype: expected {expected.dtype}, got {got.dtype}"
    got = got.detach().cpu()
    expected = expected.detach().cpu()
    if not expected.is_floating_point():
        wrong = (got != expected).nonzero()
        if len(wrong) == 0:
            return None
        return f"{len(wrong)} of {got.numel()} entries differ, the first at index {tuple(wrong[0].tolist())}"
    if bool(torch.isnan(got).any()) and not bool(torch.isnan(expected).any()):
        return "the result contains NaN"
    if torch.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True):
        return None
    err = (got - expected).abs().nan_to_num(float("inf"))
    if err.ndim == 0:
        return f"values differ: largest difference {err.item():.4g}"
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    return (f"values differ: largest difference {err[idx].item():.4g} at index {idx} "
            f"(expected {_fmt(expected[idx].item())}, got {_fmt(got[idx].item())})")


def run_case_probe(answer: Any, case: "Case", fn: Callable, *args: Any) -> Any:
    """:func:`run_probe` for one case: a :class:`Failure` raised inside it names ``case`` when it names none."""
    try:
        return run_probe(answer, fn, *args)
    except Failure as failure:
        failure.case = failure.case or case.name
        raise


def require_same_gradient(case: "Case", got: Any, expected: Any, wrt: str, hint: str, *, rtol: float,
                          atol: float) -> None:
    """Raise a :class:`Failure` on ``case`` when the answer's gradient ``got`` differs from ``expected``.

    ``wrt`` names what the gradient is taken with respect to, in the learner's words ("the anchors").
    """
    diff = first_difference(got, expected, rtol=rtol, atol=atol)
    if diff is not None:
        raise Failure(case.name, f"the gradient with respect to {wrt} differs: {diff}",
                      expected=describe(expected), received=describe(got), hint=hint)


def diagnose(got_by_case: Sequence[Any], mistakes: Sequence[Mistake], cases: Sequence[Case],
             failing: int, run: Callable[[Callable, Case], Any],
             compare: Callable[[Any, Any], str | None] = first_difference, *, every_case: bool = False) -> str:
    """The hint of the mistake whose outputs the answer reproduces, or ``""``.

    The mistake must match the answer on the failing case; among those, the
    one matching on most other cases wins (edge cases often coincide for
    several mistakes).  With ``every_case``, it must match wherever the answer
    ran: for answers that are single numbers, which coincide by chance.
    ``got_by_case[i]`` is :data:`RAISED` where the answer raised.
    """
    best, best_score = "", 0
    for mistake in mistakes:
        score = 0
        for i, (case, got) in enumerate(zip(cases, got_by_case)):
            if got is RAISED:
                continue
            try:
                wrong = run(mistake.fn, case)
            except Exception:  # a variant that cannot run on this input simply does not match
                wrong = RAISED
            if wrong is not RAISED and compare(got, wrong) is None:
                score += 1
            elif i == failing or every_case:
                score = -1
                break
        if score > best_score:
            best, best_score = mistake.hint, score
    return best


def call_plain(fn: Callable, case: Case) -> Any:
    """Run ``fn`` on fresh copies of the case's arguments."""
    args, kwargs = case.fresh()
    return fn(*args, **kwargs)


def compare_with_reference(answer: Callable, cases: Sequence[Case], reference: Callable,
                           mistakes: Sequence[Mistake] = (), *,
                           generic_hint: str = "",
                           error_hints: Sequence[tuple[str, str]] = (),
                           properties: Sequence[Callable[[Any, tuple, Case], tuple[str, str] | None]] = (),
                           compare: Callable[[Any, Any], str | None] = first_difference,
                           show: Callable[[Any], str] = describe,
                           hint_needs_every_case: bool = False,
                           autograd: bool = True) -> None:
    """The common check: on every case the answer must return what ``reference`` returns.

    Args:
        answer: the learner's function.
        cases: inputs, simple ones first.
        reference: the package's (or the grader's) correct implementation.
        mistakes: known-wrong variants used to explain a mismatch.
        generic_hint: said when no mistake matches.
        error_hints: (substring of an exception, hint) pairs for answers that raise.
        properties: extra checks ``(output, args after the call, case) -> (problem, hint)
            or None`` run on matching outputs (e.g. the loss must keep its gradient).
        compare: ``(got, expected) -> difference or None``; default :func:`first_difference`.
        show: describes an output for the learner; default :func:`describe`.
        hint_needs_every_case: name a mistake only when it matches the answer on every case (see
            :func:`diagnose`).
        autograd: ``False`` runs the answer in inference mode, so that autograd cannot stand in for a
            derivation the task asks for (an answer that calls it is told why it failed).

    Raises:
        NotAttempted, Failure: see :func:`call_answer`; Failure also on a mismatch,
            and when the answer changes its inputs in place.
    """
    if not autograd and callable(answer):
        answer = _without_autograd(answer)
        error_hints = [*error_hints, *((pattern, _NO_AUTOGRAD) for pattern in ("does not require grad", "inference"))]
    got_by_case: list[Any] = []
    for i, case in enumerate(cases):
        args, kwargs = case.fresh()
        got = call_answer(answer, args, kwargs, case.name, error_hints)
        _check_inputs_unchanged(case, args, kwargs)
        got_by_case.append(got)
        expected = call_plain(reference, case)
        diff = compare(got, expected)
        if diff is None:
            for prop in properties:
                found = prop(got, args, case)
                if found:
                    raise Failure(case.name, found[0], received=show(got), hint=found[1])
            continue
        for later in cases[i + 1:]:
            got_by_case.append(try_run(answer, later))
        hint = diagnose(got_by_case, mistakes, cases, i, call_plain, compare,
                        every_case=hint_needs_every_case) or generic_hint
        raise Failure(case.name, diff, expected=show(expected), received=show(got), hint=hint)


_NO_AUTOGRAD = ("The check runs your function with autograd switched off (inference mode): the task is to derive "
                "the result and compute it from your formula. Use autograd beside it, in a cell of your own, to "
                "check the formula.")


def _without_autograd(answer: Callable) -> Callable:
    remote = getattr(answer, "without_autograd", None)
    if remote is not None:
        return remote()

    def in_inference_mode(*args, **kwargs):
        with torch.inference_mode():
            return answer(*args, **kwargs)

    return in_inference_mode


def try_run(fn: Callable, case: Case, run: Callable[[Callable, Case], Any] = call_plain) -> Any:
    """``run(fn, case)``, or :data:`RAISED` if that raises (to rank mistakes, see :func:`diagnose`)."""
    try:
        return run(fn, case)
    except Exception:  # an answer that raises on this input matches no mistake here
        return RAISED


def _check_inputs_unchanged(case: Case, args: tuple, kwargs: dict) -> None:
    """Fail when the answer modified an input tensor in place (the caller's data would change)."""
    originals = list(case.args) + list(case.kwargs.values())
    used = list(args) + list(kwargs.values())
    for k, (before, after) in enumerate(zip(originals, used)):
        if isinstance(before, torch.Tensor) and not torch.equal(before, after.detach()):
            raise Failure(case.name, f"your function changed its input number {k + 1} in place",
                          hint="Use out-of-place operations (x = x * s, not x *= s or x.mul_(s)): "
                               "the caller still needs its original tensor.")


def keeps_gradient(got: Any, args: tuple, case: Case) -> tuple[str, str] | None:
    """A property for losses: inputs that require gradients must give an output that does too."""
    if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args) and not (
            isinstance(got, torch.Tensor) and got.requires_grad):
        return ("the result is cut off from the inputs' gradients",
                "Build it from torch operations only: no .item(), .detach(), .numpy() or "
                "torch.tensor(...) of intermediate values, and no torch.no_grad().")
    return None
