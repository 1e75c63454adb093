"""Plain data between the grader and a worker (clcourse.grading.wire), and how the supervisor reads cells."""

import io
import json
import struct

import numpy as np
import pytest
import torch

from clcourse.grading import wire
from clcourse.grading.supervisor import prepare_cell
from clcourse.grading.worker import Session


def _round_trip(value, keep=None, resolve=lambda tag: tag):
    stream = io.BytesIO()
    wire.send(stream, {"value": value}, keep=keep)
    stream.seek(0)
    return wire.receive(stream, resolve)["value"]


def test_plain_data_round_trips_with_types_shapes_and_gradient_flags():
    g = torch.Generator().manual_seed(3)
    value = {
        "floats": torch.randn(2, 3, dtype=torch.float64), "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 4),
        "ints": torch.arange(5), "mask": torch.tensor([True, False]), "half": torch.ones(2, dtype=torch.bfloat16),
        "grad": torch.ones(3, requires_grad=True) * 2, "array": np.arange(6.0).reshape(2, 3),
        "np_scalar": np.float32(0.25), "numbers": (1, 2.5, float("nan"), True, None, "text"), "nested": [[1], {"k": 2}],
        "dtype": torch.float16, "generator": g,
    }
    got = _round_trip(value)
    for key in ("floats", "scalar", "empty", "ints", "mask", "half"):
        assert got[key].dtype == value[key].dtype and torch.equal(got[key], value[key]), key
    assert got["grad"].requires_grad and not got["floats"].requires_grad
    assert isinstance(got["array"], np.ndarray) and np.array_equal(got["array"], value["array"])
    assert type(got["np_scalar"]) is np.float32 and got["np_scalar"] == np.float32(0.25)
    assert got["numbers"][:2] == (1, 2.5) and np.isnan(got["numbers"][2]) and got["numbers"][3:] == (True, None, "text")
    assert got["nested"] == [[1], {"k": 2}] and got["dtype"] is torch.float16
    assert torch.equal(torch.rand(3, generator=got["generator"]), torch.rand(3, generator=g))


def test_objects_that_are_not_plain_data_become_handles_or_are_refused():
    with pytest.raises(wire.WireError, match="cannot be sent"):
        _round_trip(torch.nn.Linear(2, 2))
    kept = []

    def keep(obj):
        kept.append(obj)
        return {"__handle__": len(kept), "type": type(obj).__name__}

    assert _round_trip(torch.nn.Linear(2, 2), keep=keep) == {"__handle__": 1, "type": "Linear"}


def _frame(header: dict, blobs=()) -> io.BytesIO:
    text = json.dumps(header).encode()
    parts = [wire.MAGIC, struct.pack(">II", len(text), len(blobs)), text]
    for blob in blobs:
        parts += [struct.pack(">Q", len(blob)), blob]
    return io.BytesIO(b"".join(parts))


@pytest.mark.parametrize("header, blobs, message", [
    ({"__tensor__": 0, "dtype": "float32", "shape": [4], "grad": False}, [b"\0" * 12], "does not match"),
    ({"__tensor__": 3, "dtype": "float32", "shape": [1], "grad": False}, [b"\0" * 4], "bad data reference"),
    ({"__tensor__": 0, "dtype": "object", "shape": [1]}, [b"\0" * 8], "unsupported tensor dtype"),
    ({"__tensor__": 0, "dtype": "float32", "shape": [-1]}, [b""], "bad shape"),
    ({"__ndarray__": 0, "dtype": "O", "shape": [1]}, [b"\0" * 8], "unsupported array dtype"),
    ({"__pickle__": "gASV"}, [], "unknown object"),
    ({"__ref__": 1}, [], "may not"),
])
def test_malformed_or_forbidden_messages_are_refused(header, blobs, message):
    def resolve(tag):
        raise wire.WireError("references may not be sent here")

    with pytest.raises(wire.WireError, match=message):
        wire.receive(_frame(header, blobs), resolve)


def test_truncated_oversized_and_deep_messages_are_refused():
    with pytest.raises(EOFError):
        wire.receive(io.BytesIO(wire.MAGIC + b"\0\0"), lambda tag: tag)
    with pytest.raises(wire.WireError, match="magic"):
        wire.receive(io.BytesIO(b"PKL1" + b"\0" * 8), lambda tag: tag)
    with pytest.raises(wire.WireError, match="too large"):
        wire.receive(io.BytesIO(wire.MAGIC + struct.pack(">II", 2**31, 0)), lambda tag: tag)
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.WireError, match="nested"):
        _round_trip(deep)


def test_cells_lose_their_check_calls_and_magics_but_keep_everything_else():
    code, checked = prepare_cell("%matplotlib inline\n!pip install x\nimport torch\ncheck('03.nt_xent', f)\n"
                                 "grading.check(\"07.key_age\", g)\ny = check\nprint(check)")
    assert checked == ["03.nt_xent", "07.key_age"]
    assert "check(" not in code and "import torch" in code and "y = check" in code and "print(check)" in code
    assert "%matplotlib" not in code and "pip install" not in code
    compile(code, "<cell>", "exec")
    assert prepare_cell("def broken(:\n    pass") == ("def broken(:\n    pass", [])


def test_an_answer_must_be_written_in_the_notebook_decorators_allowed():
    session = Session()
    cell = ("import functools, torch\nimport clcourse.losses\n"
            "@torch.no_grad()\ndef decorated(x):\n    return x\n"
            "def plain(x):\n    return x\n"
            "aliased = clcourse.losses.nt_xent\nwrapped = functools.partial(plain)\nmade = eval('lambda x: x')")
    assert session.handle({"op": "exec", "cell": 1, "source": cell}) == {"ok": True}
    for name in ("decorated", "plain"):
        assert session.handle({"op": "lookup", "name": name}) == {"ok": True}
    assert session.handle({"op": "lookup", "name": "aliased"}) == {"foreign": "clcourse.losses.nt_xent"}
    assert "foreign" in session.handle({"op": "lookup", "name": "wrapped"})
    assert "foreign" in session.handle({"op": "lookup", "name": "made"})
    assert session.handle({"op": "lookup", "name": "absent"}) == {"missing": "absent"}
