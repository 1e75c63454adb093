"""The grader's side of a submission's worker: its functions and objects as local stand-ins.

A :class:`RemoteAnswer` is passed to a task's checker in place of the learner's function: calling it sends
the arguments to the worker as plain data, and returns the worker's result the same way. Exceptions come back
as their type name, message and the submission's line, and are raised here, so the checker's feedback reads
as in the notebook; changes the function made to its tensor arguments are copied back, so the checker sees
them.
"""

from __future__ import annotations

from typing import Any

import torch

from clcourse.grading import wire
from clcourse.grading.harness import Failure, NotAttempted
from clcourse.grading.sandbox import Worker


class WorkerLost(Failure):
    """The worker running the submission died, or answered with something that is not plain data: the answer's
    failure (the checker reports it as such, whichever of its steps was waiting)."""

    def __init__(self, problem: str) -> None:
        super().__init__("", problem, hint="Your code ended the process that ran it (os._exit, a signal, a "
                                           "resource limit), or sent back something that is not plain data.")


class Connection:
    """Requests to one worker; ``broken`` once a request was cut short (the worker must be replaced)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.broken = False

    def resolve(self, tag: dict) -> Any:
        if "__handle__" not in tag or not isinstance(tag["__handle__"], int):
            raise wire.WireError("the worker sent an object reference it may not send")
        return (RemoteCallable if tag.get("callable") is True else RemoteObject)(self, tag)

    def ask(self, message: dict) -> dict:
        """One request and its reply (a dict)."""
        if self.broken:
            raise WorkerLost("the process running your code is gone (it died or timed out earlier in this check)")
        try:
            self.worker.send(message)
        except wire.WireError as exc:  # nothing was written: an input the checker cannot send, a grader bug
            raise RuntimeError(f"clcourse cannot send this input to the grading worker: {exc}") from None
        except EOFError:
            self.broken = True
            raise WorkerLost(f"the process running your code died: {self.worker.exit_status()}") from None
        done = False
        try:
            reply = self.worker.receive(self.resolve)
            done = True
        except EOFError:
            raise WorkerLost(f"the process running your code died: {self.worker.exit_status()}") from None
        except wire.WireError as exc:
            raise WorkerLost(f"your code's result could not be read as plain data: {exc}") from None
        finally:
            if not done:
                self.broken = True
        if not isinstance(reply, dict):
            self.broken = True
            raise WorkerLost("the process running your code sent something that is not a reply")
        return reply

    def call(self, target: dict, args: tuple, kwargs: dict, inference: bool = False) -> Any:
        reply = self.ask({"op": "call", "target": target, "args": list(args), "kwargs": dict(kwargs),
                          "inference": inference})
        result = _unpack(reply)
        for mine, theirs in zip(args, reply.get("args", ())):
            _copy_back(mine, theirs)
        for key, theirs in (reply.get("kwargs") or {}).items():
            if key in kwargs:
                _copy_back(kwargs[key], theirs)
        return result

    def lookup(self, name: str) -> dict:
        """``{}`` when the notebook defines function ``name``; else ``{"missing": ...}`` or ``{"foreign": ...}``."""
        return self.ask({"op": "lookup", "name": name})

    def run_probe(self, probe: str, name: str, args: tuple) -> Any:
        return _unpack(self.ask({"op": "probe", "probe": probe, "target": {"name": name}, "args": list(args)}))


def _unpack(reply: dict) -> Any:
    """The reply's result, or the exception it reports raised here."""
    if "result" in reply:
        return reply["result"]
    if "not_attempted" in reply:
        raise NotAttempted(str(reply["not_attempted"]))
    if isinstance(reply.get("failure"), dict):
        fields = {k: str(reply["failure"].get(k, "")) for k in ("case", "problem", "expected", "received", "hint")}
        raise Failure(fields.pop("case"), fields.pop("problem"), **fields)
    if isinstance(reply.get("raised"), dict):
        raise _exception(reply["raised"])
    raise WorkerLost("the process running your code sent a reply the grader does not know")


def _exception(raised: dict) -> BaseException:
    """An exception standing for the one the submission raised: same type name, message and line."""
    name, message = str(raised.get("type", "Exception"))[:80], str(raised.get("message", ""))[:2000]
    if name == "NotImplementedError":
        return NotImplementedError(message)
    if name == "SystemExit":
        return SystemExit(raised.get("code"))
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    kind = type(name if name.isidentifier() else "Exception", (Exception,), {})
    exc = kind(message)
    exc.learner_line = str(raised.get("line", ""))[:500]
    return exc


def _copy_back(mine: Any, theirs: Any) -> None:
    """Make the checker's argument show what the worker's function did to its copy."""
    if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
        with torch.no_grad():
            if mine.shape == theirs.shape and mine.dtype == theirs.dtype:
                mine.copy_(theirs)
            else:
                mine.data = theirs.detach()
    elif isinstance(mine, torch.Generator) and isinstance(theirs, torch.Generator):
        mine.set_state(theirs.get_state())
    elif isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        for a, b in zip(mine, theirs):
            _copy_back(a, b)


class RemoteAnswer:
    """The learner's function ``name``, living in the worker; call it like the function itself."""

    def __init__(self, connection: Connection, name: str, inference: bool = False) -> None:
        self.connection, self.name, self.inference = connection, name, inference

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection.call({"name": self.name}, args, kwargs, self.inference)

    def without_autograd(self) -> RemoteAnswer:
        """The same function, run in inference mode in the worker (see ``compare_with_reference``)."""
        return RemoteAnswer(self.connection, self.name, inference=True)

    def run_probe(self, probe: str, args: tuple) -> Any:
        """Run the registered probe ``probe`` on this function in the worker (see ``harness.run_probe``)."""
        return self.connection.run_probe(probe, self.name, args)

    def __repr__(self) -> str:
        return f"<the submission's {self.name}()>"


class RemoteObject:
    """An object the learner's code returned that is not plain data (a module, a pipeline...), held by the worker.

    Its public plain attributes (numbers, strings, flat tuples) were copied when it was returned and read as
    attributes here; ``type_name`` is its class's full name, as the worker reported it.
    """

    def __init__(self, connection: Connection, tag: dict) -> None:
        self._connection = connection
        self.wire_reference = tag["__handle__"]
        self.type_name = str(tag.get("type", "?"))
        fields = tag.get("fields")
        self._fields = fields if isinstance(fields, dict) else {}

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<{self.type_name} held by the grading worker>"


class RemoteCallable(RemoteObject):
    """A callable :class:`RemoteObject`: calling it runs the call in the worker."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._connection.call({"ref": self.wire_reference}, args, kwargs)
