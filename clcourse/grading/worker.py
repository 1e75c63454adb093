"""The process that runs one submission's code, inside the sandbox (:mod:`clcourse.grading.sandbox`).

It executes the notebook's code cells, then calls the functions the grader names on inputs the grader
sends, and answers with plain data (:mod:`clcourse.grading.wire`). It never holds a reference answer, a
score or the grader's seed: whatever it sends back is the submission's output, which the grader compares in
its own process. Run as ``python -m clcourse.grading.worker REQUEST_FD REPLY_FD``.
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import os
import sys
import traceback
from typing import Any

import torch

from clcourse.grading import harness, wire

CELL_FILE = "<cell {}>"


def describe_exception(exc: BaseException) -> dict:
    """Type, message and the submission's line that raised, as plain data."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell ")]
    line = ""
    if frames:
        frame = frames[-1]
        line = f"at line {frame.lineno} of {frame.name}() in {frame.filename}: {(frame.line or '').strip()}"
    code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, (int, str, type(None))) else None
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "line": line, "code": code}


def _public_fields(obj: Any) -> dict:
    """The object's public attributes that are plain numbers, strings or flat sequences of them."""
    fields = {}
    for name, value in getattr(obj, "__dict__", {}).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str)) or (
                isinstance(value, (tuple, list)) and len(value) <= 16
                and all(isinstance(v, (bool, int, float)) for v in value)):
            fields[name] = list(value) if isinstance(value, (tuple, list)) else value
    return fields


class Session:
    """The submission's namespace and the objects it returned that are not plain data."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins,
                                          "display": lambda *args, **kwargs: None}
        self.objects: dict[int, Any] = {}

    def keep(self, obj: Any) -> dict:
        """Hold ``obj`` for later calls; the grader gets a handle with its type and plain fields."""
        key = len(self.objects) + 1
        self.objects[key] = obj
        kind = type(obj)
        return {"__handle__": key, "type": f"{kind.__module__}.{kind.__qualname__}", "callable": callable(obj),
                "fields": _public_fields(obj)}

    def resolve(self, tag: dict) -> Any:
        if "__ref__" in tag and tag["__ref__"] in self.objects:
            return self.objects[tag["__ref__"]]
        raise wire.WireError("the grader referred to an object this worker does not hold")

    def handle(self, message: dict) -> dict:
        op = message.get("op")
        if op == "exec":
            return self._exec(message["cell"], message["source"])
        if op == "lookup":
            found = self._target({"name": message["name"]})
            return found if isinstance(found, dict) else {"ok": True}
        if op in ("call", "probe"):
            target = self._target(message["target"])
            if isinstance(target, dict):
                return target
            try:
                if op == "probe":
                    return {"result": harness.PROBES[message["probe"]](target, *message["args"])}
                args, kwargs = list(message["args"]), dict(message["kwargs"])
                if message.get("inference"):
                    with torch.inference_mode():
                        result = target(*args, **kwargs)
                else:
                    result = target(*args, **kwargs)
                return {"result": result, "args": args, "kwargs": kwargs}
            except harness.NotAttempted as exc:
                return {"not_attempted": str(exc)}
            except harness.Failure as f:
                return {"failure": {"case": f.case, "problem": f.problem, "expected": f.expected,
                                    "received": f.received, "hint": f.hint}}
            except BaseException as exc:  # the submission's exception is its answer's failure
                return {"raised": describe_exception(exc)}
        raise wire.WireError(f"unknown request {op!r}")

    def _exec(self, index: int, source: str) -> dict:
        filename = CELL_FILE.format(index)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            exec(compile(source, filename, "exec"), self.namespace)
        except BaseException as exc:  # a cell that raises costs only what depends on it
            return {"error": describe_exception(exc)}
        return {"ok": True}

    def _target(self, target: dict) -> Any:
        """The callable to run, or a reply saying why there is none."""
        if "ref" in target:
            return self.objects[target["ref"]]
        name = target["name"]
        if name not in self.namespace:
            return {"missing": name}
        fn = self.namespace[name]
        if not _written_in_a_cell(fn):
            where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
            return {"foreign": where}
        return fn


def _written_in_a_cell(fn: Any) -> bool:
    """A function defined in the notebook, possibly under decorators that keep ``__wrapped__`` (torch.no_grad)."""
    for _ in range(16):
        if inspect.isfunction(fn) and fn.__code__.co_filename.startswith("<cell "):
            return True
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return False
    return False


def main(argv: list[str]) -> int:
    requests = os.fdopen(int(argv[0]), "rb")
    replies = os.fdopen(int(argv[1]), "wb")
    session = Session()
    while True:
        try:
            message = wire.receive(requests, session.resolve)
        except EOFError:
            return 0
        if message.get("op") == "quit":
            return 0
        try:
            reply = session.handle(message)
            wire.send(replies, reply, keep=session.keep)
        except Exception as exc:  # a result that cannot travel as plain data is the answer's failure
            wire.send(replies, {"raised": {"type": type(exc).__name__, "message": f"the result cannot be sent to "
                                           f"the grader as plain data: {exc}", "line": "", "code": None}})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
